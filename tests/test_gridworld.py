"""Grid World: maps, the model P/R, sampling that follows P (slip included), observations, rendering, resume."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from rl_lab.envs import make_env
from rl_lab.envs.gridworld import MAPS, OBS_MODES, GridMap, GridWorldEnv
from rl_lab.errors import UserError

UP, RIGHT, DOWN, LEFT = range(4)


@pytest.mark.parametrize("name", sorted(MAPS))
@pytest.mark.parametrize("obs", OBS_MODES)
def test_every_map_and_observation_passes_gymnasiums_checker(name, obs):
    env = gym.make("rl_lab/GridWorld-v0", map=name, obs=obs, slip=0.2, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium's checker reports most problems as warnings
        check_env(env, skip_render_check=False)


def test_lecture_map_model():
    env = GridWorldEnv("4x4")
    assert env.n_states == 16 and env.grid.shape == (4, 4)
    np.testing.assert_array_equal(np.flatnonzero(env.terminal), [0, 15])
    np.testing.assert_allclose(env.grid.start, np.where(env.terminal, 0.0, 1 / 14))
    np.testing.assert_allclose(env.P.sum(axis=2), 1.0)
    s = 5  # row 1, col 1
    assert [int(env.P[s, a].argmax()) for a in range(4)] == [1, 6, 9, 4]
    assert env.P[3, UP, 3] == 1.0 and env.P[3, RIGHT, 3] == 1.0  # the border: stay
    np.testing.assert_array_equal(env.R[~env.terminal], -1.0)
    for t in (0, 15):  # absorbing, reward 0
        np.testing.assert_array_equal(env.P[t, :, t], 1.0)
        np.testing.assert_array_equal(env.R[t], 0.0)


def test_walls_block_moves_and_are_not_states():
    grid = GridMap.parse("w", ["S#.", "..T"])
    assert len(grid.cells) == 5 and grid.index()[0, 1] == -1
    env = GridWorldEnv(["S#.", "..T"])
    assert env.P[0, RIGHT, 0] == 1.0  # into the wall: stay
    np.testing.assert_array_equal(env.grid.start, [1, 0, 0, 0, 0])


def test_slip_moves_sideways_in_P():
    env = GridWorldEnv(["...", "...", "..T"], slip=0.2)
    centre = 4
    np.testing.assert_allclose(env.P[centre, RIGHT, [5, 1, 7]], [0.8, 0.1, 0.1])
    # from the top-left corner, up is blocked: the intended 0.8 stays put, the sideways 0.1 go left (stay) and right
    np.testing.assert_allclose(env.P[0, UP, [0, 1]], [0.9, 0.1])


def test_sampled_transitions_follow_P_with_slip():
    env = make_env("rl_lab/GridWorld-v0", map="rooms", slip=0.3)
    env.reset(seed=0)
    core = env.unwrapped
    n = 4000
    for s, a in [(12, RIGHT), (0, UP), (40, LEFT)]:
        counts = np.zeros(core.n_states)
        for _ in range(n):
            core.state = s
            env.step(a)
            counts[core.state] += 1
        p = core.P[s, a]
        assert (p > 0).sum() >= 2  # a move with somewhere to slip to
        sigma = np.sqrt(p * (1 - p) / n)
        assert np.all(np.abs(counts / n - p) <= 5 * sigma + 1e-12), (s, a, counts / n, p)


def test_episode_ends_on_terminal_and_is_truncated_by_the_time_limit():
    env = gym.make("rl_lab/GridWorld-v0", map="4x4")
    env.reset(seed=0)
    env.unwrapped.state = 1  # next to the top-left terminal
    _, reward, terminated, truncated, _ = env.step(LEFT)
    assert (reward, terminated, truncated) == (-1.0, True, False)
    env.reset(seed=0)
    env.unwrapped.state = 1
    for t in range(200):  # up from the top row: never ends by itself
        _, _, terminated, truncated, _ = env.step(UP)
        assert not terminated and truncated == (t == 199)


def test_observation_modes_identify_states():
    states = np.arange(16)
    onehot = GridWorldEnv("4x4", obs="onehot").observation(states)
    np.testing.assert_array_equal(onehot.argmax(axis=1), states)
    coords = GridWorldEnv("4x4", obs="coords").observation(states)
    assert coords.min() == 0.0 and coords.max() == 1.0 and len(np.unique(coords, axis=0)) == 16
    assert isinstance(GridWorldEnv("4x4").observation(3), np.int64)


def test_same_seed_same_trajectory_and_snapshot_restores_slippery_episode():
    def roll(env, actions):
        return [env.step(a)[:3] for a in actions]

    actions = np.random.default_rng(1).integers(4, size=30)
    a, b = (
        make_env("rl_lab/GridWorld-v0", map="rooms", slip=0.5),
        make_env("rl_lab/GridWorld-v0", map="rooms", slip=0.5),
    )
    a.reset(seed=3)
    b.reset(seed=3)
    assert roll(a, actions[:10]) == roll(b, actions[:10])
    snapshot = a.snapshot()
    restored = make_env("rl_lab/GridWorld-v0", map="rooms", slip=0.5)
    restored.reset(seed=99)
    assert restored.restore(snapshot) == a.unwrapped.observation(a.unwrapped.state)
    assert roll(restored, actions[10:]) == roll(a, actions[10:])


def test_render_text_and_image_show_the_agent():
    env = gym.make("rl_lab/GridWorld-v0", map="maze", render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert text.splitlines()[0][0] == "A" and "#" in text and "T" in text  # the maze starts at its top-left S
    env = gym.make("rl_lab/GridWorld-v0", map="maze", render_mode="rgb_array")
    env.reset(seed=0)
    env.step(DOWN)
    image = env.render()
    px = GridWorldEnv.CELL_PX
    assert image.shape == (6 * px, 8 * px, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[px + px // 2, px // 2], [220, 50, 50])  # agent at row 1, col 0
    np.testing.assert_array_equal(image[px // 2, 2 * px + px // 2], [40, 40, 40])  # the wall at row 0, col 2


def test_map_from_a_text_file(tmp_path):
    path = tmp_path / "corridor.txt"
    path.write_text("S...T\n")
    env = make_env("rl_lab/GridWorld-v0", map=str(path))
    assert env.unwrapped.grid.name == "corridor" and env.unwrapped.n_states == 5


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"map": "5x5"}, ["5x5", "4x4, rooms, maze"]),
        ({"map": ["S.", "..."]}, ["equal length"]),
        ({"map": ["S.X"]}, ["'X'"]),
        ({"map": ["TT"]}, ["no free non-terminal cell"]),
        ({"obs": "pixels"}, ["pixels", "index, onehot, coords"]),
        ({"slip": 1.5}, ["slip"]),
        ({"sleep": 0.1}, ["sleep"]),
    ],
)
def test_bad_env_kwargs_are_user_errors(kwargs, words):
    with pytest.raises(UserError) as err:
        make_env("rl_lab/GridWorld-v0", **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)
