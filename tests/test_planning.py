"""Value iteration, Q-value iteration, policy evaluation and `rl-lab solve`, against oracles computed apart:
grid distances by breadth-first search, Sutton & Barto's random-policy values, Monte Carlo returns."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
from conftest import REPO

from rl_lab.cli import main
from rl_lab.envs import make_env
from rl_lab.envs.gridworld import MAPS, MOVES, GridWorldEnv
from rl_lab.errors import UserError
from rl_lab.rl.planning import (
    bellman_residual,
    greedy_policy,
    policy_evaluation,
    q_value_iteration,
    reachable,
    value_iteration,
)


def model(env: GridWorldEnv) -> tuple:
    return env.P, env.R, env.terminal


def bfs_distance(rows: list[str]) -> dict[tuple[int, int], int]:
    """Moves from each cell to the nearest T, by breadth-first search over the text map."""
    cells = {(i, j) for i, r in enumerate(rows) for j, ch in enumerate(r) if ch != "#"}
    dist = {c: 0 for c in cells if rows[c[0]][c[1]] == "T"}
    queue = deque(dist)
    while queue:
        i, j = queue.popleft()
        for di, dj in MOVES:
            n = (i + di, j + dj)
            if n in cells and n not in dist:
                dist[n] = dist[(i, j)] + 1
                queue.append(n)
    return dist


def test_lecture_map_value_is_minus_the_distance_to_the_nearest_corner():
    env = GridWorldEnv("4x4")
    V = value_iteration(*model(env), gamma=1.0)
    i, j = env.grid.cells.T
    np.testing.assert_array_equal(V, -np.minimum(i + j, 6 - i - j))
    assert bellman_residual(*model(env), 1.0, V) == 0.0
    assert bellman_residual(*model(env), 1.0, V + 0.5 * ~env.terminal) > 0.4


@pytest.mark.parametrize("name", sorted(MAPS))
def test_value_iteration_equals_breadth_first_distances_with_walls(name):
    env = GridWorldEnv(name)
    V = value_iteration(*model(env), gamma=1.0)
    dist = bfs_distance(MAPS[name])
    np.testing.assert_array_equal(V, [-dist[(i, j)] for i, j in env.grid.cells])


def test_q_value_iteration_is_consistent_with_v_and_discounting():
    env = GridWorldEnv("maze", slip=0.2)
    gamma = 0.9
    V = value_iteration(*model(env), gamma)
    Q = q_value_iteration(*model(env), gamma)
    np.testing.assert_allclose(Q.max(axis=1), V, atol=1e-8)
    expected = env.R + gamma * env.P @ np.where(env.terminal, 0.0, V)
    np.testing.assert_allclose(Q[~env.terminal], expected[~env.terminal], atol=1e-8)
    assert bellman_residual(*model(env), gamma, V) < 1e-8
    # deterministic: V = -(1 - gamma^d) / (1 - gamma) for distance d
    det = GridWorldEnv("maze")
    d = -value_iteration(*model(det), 1.0)
    np.testing.assert_allclose(value_iteration(*model(det), gamma), -(1 - gamma**d) / (1 - gamma), atol=1e-8)


def test_random_policy_values_are_sutton_and_barto_figure_4_1():
    env = GridWorldEnv("4x4")
    V = policy_evaluation(*model(env), 1.0, np.full((16, 4), 0.25))
    textbook = [[0, -14, -20, -22], [-14, -18, -20, -20], [-20, -20, -18, -14], [-22, -20, -14, 0]]
    np.testing.assert_allclose(V.reshape(4, 4), textbook, atol=1e-9)


def test_optimal_policy_value_matches_v_star_and_monte_carlo_returns():
    env = GridWorldEnv("rooms", slip=0.2)
    gamma = 0.95
    V = value_iteration(*model(env), gamma)
    policy = greedy_policy(q_value_iteration(*model(env), gamma))
    np.testing.assert_allclose(policy_evaluation(*model(env), gamma, policy), V, atol=1e-6)
    # sample the env itself: the discounted return from the start cell averages to V*(start)
    sim = make_env("rl_lab/GridWorld-v0", map="rooms", slip=0.2)
    sim.reset(seed=0)
    start = int(np.flatnonzero(env.grid.start)[0])
    returns = []
    for _ in range(1000):
        s, total, discount, done = sim.reset()[0], 0.0, 1.0, False
        while not done:
            s, r, terminated, truncated, _ = sim.step(int(policy[s].argmax()))
            total, discount, done = total + discount * r, discount * gamma, terminated or truncated
        returns.append(total)
    assert abs(np.mean(returns) - V[start]) < 4 * np.std(returns) / np.sqrt(len(returns))


def test_greedy_policy_keeps_every_optimal_action():
    policy = greedy_policy(q_value_iteration(*model(GridWorldEnv("4x4")), 1.0))
    np.testing.assert_allclose(policy[5], [0.5, 0, 0, 0.5])  # (1, 1): up or left, both 2 moves from a corner


def test_unsolvable_with_gamma_one_is_a_user_error():
    env = GridWorldEnv(["T#.", ".#S"])  # the right column cannot reach the terminal
    with pytest.raises(UserError, match="did not converge"):
        value_iteration(*model(env), 1.0, max_iters=1000)
    with pytest.raises(UserError, match="never terminates"):
        policy_evaluation(*model(env), 1.0, np.full((4, 4), 0.25))
    V = value_iteration(*model(env), 0.5)  # discounting makes it finite: -1 forever is -1 / (1 - 0.5)
    np.testing.assert_allclose(V, [0.0, -2.0, -1.0, -2.0])  # states row-major: T, (0, 2), (1, 0), S
    np.testing.assert_array_equal(reachable(env.P, env.grid.start), [False, True, False, True])


def test_solve_command_prints_and_writes_the_solution(tmp_path, capsys):
    assert main(["solve", "4x4", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "-22.00" in out and "T ← ← ↓" in out  # random-policy values and the optimal policy's first row
    solution = json.loads((tmp_path / "out" / "solution.json").read_text())
    assert solution["gamma"] == 1.0 and solution["V"][3] == -3.0 and solution["bellman_residual"] == 0.0
    for name in ("optimal.png", "solve.png"):
        assert (tmp_path / "out" / name).stat().st_size > 10_000


def test_solve_command_takes_env_id_options_and_a_map_file(tmp_path, capsys):
    assert (
        main(["solve", "rl_lab/GridWorld-v0", "--gamma", "0.5", "--step-reward", "-2", "--out", str(tmp_path / "a")])
        == 0
    )
    solution = json.loads((tmp_path / "a" / "solution.json").read_text())
    assert solution["V"][1] == -2.0 and solution["V"][2] == -3.0  # -2, then -2 - 0.5 * 2
    (tmp_path / "line.txt").write_text("S..T\n")
    assert main(["solve", str(tmp_path / "line.txt"), "--slip", "0.1", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "solution.json").read_text())["slip"] == 0.1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["solve", "5x5"], ["5x5", "not a registered"]),
        (["solve", "CartPole-v1"], ["CartPole-v1", "not a grid world"]),
        (["solve", "4x4", "--gamma", "1.5"], ["--gamma 1.5"]),
        (["solve", "4x4", "--slip", "2"], ["slip"]),
        (["solve", str(REPO / "configs" / "gridworld_q.yaml"), "--slip", "0.1"], ["--slip"]),
        (["solve", "."], ["not a run directory"]),
    ],
)
def test_solve_command_user_errors(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "runs").exists()
