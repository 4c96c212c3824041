"""Dynamic programming on a known finite MDP, and the exact oracle it gives the learning agents.

The model is arrays: P[s, a, s'], R[s, a] (expected reward of a move) and terminal[s]. Every function works on all
states at once (one matrix product per sweep). Terminal states have value 0 and are never bootstrapped from,
exactly like `terminated` in the training loops; a time limit (truncation) is not part of the MDP.

`solve_command` is `rl-lab solve`: it solves a grid world and, given a run directory, compares the run's
learned Q with Q* (max |Q - Q*| over the reachable non-terminal states).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

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


# ---------------------------------------------------------------------------------------------- rl-lab solve


def format_grid(grid, values: np.ndarray | None = None, policy: np.ndarray | None = None) -> str:
    """The map as text with each state's value, or else its first optimal action's arrow; # walls, T terminals."""
    from envs.gridworld import ARROWS

    def cell(s: int) -> str:
        if s < 0:
            return "#"
        if values is not None:
            return f"{values[s]:7.2f}"
        return "T" if grid.terminal[s] else ARROWS[int(np.argmax(policy[s]))]

    width = 7 if values is not None else 1
    return "\n".join(" ".join(f"{cell(s):>{width}}" for s in row) for row in grid.index())


def solve_command(target: str, gamma: float | None, slip: float | None, step_reward: float | None, out) -> dict:
    """Solve a map, env id, config or run; print V* and the policy; write figures and solution.json to `out`."""
    env, gamma, run_dir = _resolve(target, gamma, slip, step_reward)
    P, R, terminal, grid = env.P, env.R, env.terminal, env.grid
    V = value_iteration(P, R, terminal, gamma)
    Q = q_value_iteration(P, R, terminal, gamma)
    optimal = greedy_policy(Q)
    uniform = np.full_like(R, 1.0 / R.shape[1])
    live = reachable(P, grid.start) & ~terminal
    result = {
        "target": target,
        "map": list(grid.rows),
        "gamma": gamma,
        "slip": env.slip,
        "step_reward": env.step_reward,
        "states": grid.cells.tolist(),
        "reachable_nonterminal": np.flatnonzero(live).tolist(),
        "V": V.tolist(),
        "Q": Q.tolist(),
        "bellman_residual": bellman_residual(P, R, terminal, gamma, V),
    }
    print(f"{grid.name}: gamma={gamma}, slip={env.slip}, step reward {env.step_reward}")
    print(f"\nV* (value iteration; Bellman residual {result['bellman_residual']:.1e}):\n{format_grid(grid, V)}")
    print(f"\noptimal policy:\n{format_grid(grid, policy=optimal)}")
    best = ("optimal policy: V*", V, optimal)
    panels = [best]
    try:
        V_random = policy_evaluation(P, R, terminal, gamma, uniform)
        result["V_random"] = V_random.tolist()
        print(f"\nV of the uniformly random policy:\n{format_grid(grid, V_random)}")
        panels.insert(0, ("random policy: V^random", V_random, uniform))
    except UserError as err:  # e.g. gamma=1 and a region without terminal cells
        print(f"\nrandom policy: {err}")
    if run_dir is not None:
        learned, panel = _compare_run(run_dir, env, gamma, V, Q, optimal, live)
        result.update(learned)
        panels += [panel] if panel else []
    out = Path(out) if out else (run_dir / "plots" if run_dir else Path("runs") / f"solve-{grid.name}")
    out.mkdir(parents=True, exist_ok=True)
    from rl_lab.fileio import write_atomic
    from rl_lab.plots import plot_grid_values

    title = f"{grid.name}, gamma={gamma}" + (f", slip={env.slip}" if env.slip else "")
    figures = [plot_grid_values(grid, [best], out / "optimal.png", title)]
    figures.append(plot_grid_values(grid, panels, out / "solve.png", title))
    write_atomic(out / "solution.json", json.dumps(result, indent=1) + "\n")
    print(f"\nfigures: {', '.join(map(str, figures))}\nsolution: {out / 'solution.json'}")
    return result


def _resolve(target: str, gamma, slip, step_reward):
    """The grid-world env (unwrapped), gamma, and the run directory if the target is one."""
    import gymnasium as gym

    from envs import check_env_id
    from envs.gridworld import MAPS, GridWorldEnv
    from rl_lab.config import load_config

    path = Path(target)
    run_dir = None
    if path.is_dir() or path.suffix in (".yaml", ".yml"):
        if slip is not None or step_reward is not None:
            raise UserError("--slip and --step-reward apply to maps and env ids; a config fixes its own env.kwargs")
        if path.is_dir():
            if not (path / "config.yaml").is_file():
                raise UserError(f"{path} is not a run directory (no config.yaml)")
            run_dir, path = path, path / "config.yaml"
        config = load_config(path)
        env_id, kwargs = config.env.id, dict(config.env.kwargs)
        gamma = getattr(config.agent, "gamma", 1.0) if gamma is None else gamma
    else:
        kwargs = {k: v for k, v in (("slip", slip), ("step_reward", step_reward)) if v is not None}
        if target in MAPS or path.is_file():
            env_id, kwargs["map"] = "GridWorld-v0", target
        else:
            env_id = target
            check_env_id(env_id)
        gamma = 1.0 if gamma is None else gamma
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"--gamma {gamma}: must be in [0, 1]")
    try:
        env = gym.make(env_id, **kwargs).unwrapped
    except TypeError as err:
        raise UserError(f"env kwargs do not fit {env_id}: {err}") from None
    if not isinstance(env, GridWorldEnv):
        raise UserError(f"{env_id} is not a grid world: rl-lab solve needs an env with a known model (GridWorld-v0)")
    return env, gamma, run_dir


def _compare_run(run_dir: Path, env, gamma: float, V_star, Q_star, optimal, live) -> tuple[dict, tuple | None]:
    """The oracle: the run's agent (latest checkpoint) against Q* and pi*, on the reachable non-terminal states.

    Returns figures for solution.json and a figure panel: max_a Q (agents with a `q_net`) or the value of the
    agent's greedy policy, with its greedy actions.
    """
    import torch

    from rl_lab.checkpoint import latest_checkpoint, load_checkpoint
    from rl_lab.config import load_config
    from rl_lab.run import build

    config = load_config(run_dir / "config.yaml")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    agent = build(config).trainer.agent
    torch_state, _, meta = load_checkpoint(checkpoint, agent.device)
    agent.load_state_dict(torch_state["agent"], weights_only=True)
    obs = env.observation(np.arange(env.n_states))
    greedy = np.eye(Q_star.shape[1])[agent.greedy(obs)]
    hits = (optimal * greedy).sum(axis=1) > 0
    result = {"run_step": meta["step"], "greedy_optimal_fraction": float(hits[live].mean())}
    print(f"\nrun {run_dir} at step {meta['step']}:")
    print(f"greedy action optimal in {hits[live].mean():.1%} of the reachable non-terminal states")
    panel = None
    try:
        V_greedy = policy_evaluation(env.P, env.R, env.terminal, gamma, greedy)
        result["greedy_value_gap_max"] = float((V_star - V_greedy)[live].max())
        print(f"max V*(s) - V^greedy(s) = {result['greedy_value_gap_max']:.4f}")
        panel = ("learned greedy policy: V^greedy", V_greedy, greedy)
    except UserError:
        print("the greedy policy never reaches a terminal cell from some state")
    if hasattr(agent, "q_net"):
        with torch.inference_mode():
            Q = agent.q_net(torch.as_tensor(obs, device=agent.device)).double().cpu().numpy()
        error = np.abs(Q - Q_star)[live]
        result.update(learned_Q=Q.tolist(), q_error_max=float(error.max()), q_error_mean=float(error.mean()))
        print(f"max |Q - Q*| = {error.max():.4f}, mean {error.mean():.4f} (reachable non-terminal states, all actions)")
        panel = ("learned: max_a Q, greedy policy", np.where(env.terminal, 0.0, Q.max(axis=1)), greedy)
    return result, panel
