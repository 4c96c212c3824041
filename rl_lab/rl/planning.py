"""Dynamic programming on a known finite MDP, and the exact oracle it gives the learning agents.

The model is arrays: P[s, a, s'], R[s, a] (expected reward of a move) and terminal[s]. Every function works on all
states at once (one matrix product per sweep). Terminal states have value 0 and are never bootstrapped from,
exactly like `terminated` in the training loops; a time limit (truncation) is not part of the MDP.

`rl-lab solve` (rl_lab.commands.solve) solves a grid world with these and, given a run directory, compares the
run's learned Q with Q* (max |Q - Q*| over the reachable non-terminal states).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rl_lab.envs.gridworld import ARROWS
from rl_lab.errors import UserError


def backup(P: np.ndarray, R: np.ndarray, terminal: np.ndarray, gamma: float, V: np.ndarray) -> np.ndarray:
    """Q(s, a) = R(s, a) + gamma * sum_s' P(s'|s, a) V(s'), with V = 0 at terminal states."""
    return R + gamma * P @ np.where(terminal, 0.0, V)


def _fixed_point(update: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tol: float, max_iters: int, gamma):
    for _ in range(max_iters):
        new = update(x)
        if np.abs(new - x).max() <= tol:
            return new
        x = new
    raise UserError(
        f"value iteration did not converge in {max_iters} sweeps with gamma={gamma}; with gamma=1 every "
        "state must be able to reach a terminal cell (use gamma < 1 otherwise)"
    )


def value_iteration(P, R, terminal, gamma: float, tol: float = 1e-10, max_iters: int = 100_000) -> np.ndarray:
    """V*: V_{i+1}(s) = max_a [R(s, a) + gamma * E V_i(s')], from V_0 = 0."""
    return _fixed_point(
        lambda V: np.where(terminal, 0.0, backup(P, R, terminal, gamma, V).max(axis=1)),
        np.zeros(len(R)),
        tol,
        max_iters,
        gamma,
    )


def q_value_iteration(P, R, terminal, gamma: float, tol: float = 1e-10, max_iters: int = 100_000) -> np.ndarray:
    """Q*: Q_{i+1}(s, a) = R(s, a) + gamma * E max_a' Q_i(s', a'), from Q_0 = 0 (the target DQN regresses to)."""
    return _fixed_point(
        lambda Q: np.where(terminal[:, None], 0.0, backup(P, R, terminal, gamma, Q.max(axis=1))),
        np.zeros_like(R, dtype=float),
        tol,
        max_iters,
        gamma,
    )


def greedy_policy(Q: np.ndarray, atol: float = 1e-6) -> np.ndarray:
    """(S, A) probabilities: uniform over every action within atol of the best (all optimal actions, for arrows)."""
    best = Q.max(axis=1, keepdims=True) - atol <= Q
    return best / best.sum(axis=1, keepdims=True)


def policy_evaluation(P, R, terminal, gamma: float, policy: np.ndarray) -> np.ndarray:
    """V^pi exactly: solve (I - gamma P_pi) V = R_pi over the non-terminal states; `policy` is (S, A)."""
    P_pi = np.einsum("sa,sat->st", policy, P)
    R_pi = (policy * R).sum(axis=1)
    live = ~terminal
    V = np.zeros(len(R))
    system = np.eye(live.sum()) - gamma * P_pi[np.ix_(live, live)]
    try:
        V[live] = np.linalg.solve(system, R_pi[live])
    except np.linalg.LinAlgError:
        V[live] = np.inf
    if not np.isfinite(V).all() or np.abs(system @ V[live] - R_pi[live]).max() > 1e-6:
        raise UserError(f"the policy has no finite value with gamma={gamma}: from some state it never terminates")
    return V


def bellman_residual(P, R, terminal, gamma: float, V: np.ndarray) -> float:
    """max_s |V(s) - max_a [R(s, a) + gamma * E V(s')]| over non-terminal states: 0 exactly at V*."""
    return float(np.abs(V - backup(P, R, terminal, gamma, V).max(axis=1))[~terminal].max())


def reachable(P: np.ndarray, start: np.ndarray) -> np.ndarray:
    """States some policy can reach from the start distribution (bool, S)."""
    reach = start > 0
    while True:
        grown = reach | (P[reach] > 0).any(axis=(0, 1))
        if (grown == reach).all():
            return reach
        reach = grown


def format_grid(grid, values: np.ndarray | None = None, policy: np.ndarray | None = None) -> str:
    """The map as text with each state's value, or else its first optimal action's arrow; # walls, T terminals."""

    def cell(s: int) -> str:
        if s < 0:
            return "#"
        if values is not None:
            return f"{values[s]:7.2f}"
        return "T" if grid.terminal[s] else ARROWS[int(np.argmax(policy[s]))]

    width = 7 if values is not None else 1
    return "\n".join(" ".join(f"{cell(s):>{width}}" for s in row) for row in grid.index())
