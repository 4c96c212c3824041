"""Env factory and ReplayableEnv: an episode in progress is rebuilt exactly from its JSON snapshot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rl_lab.envs import check_env_id, make_env, make_vector_env, restore_vector_env, snapshot_vector_env
from rl_lab.errors import UserError


def balance(obs: np.ndarray) -> int:
    """Push towards the side the pole falls to: keeps CartPole up until the 500-step time limit."""
    return int(obs[2] + 0.5 * obs[3] > 0)


def roll(env, obs: np.ndarray, steps: int) -> list[tuple]:
    """Step a single env with `balance`, resetting (without a seed) whenever an episode ends."""
    out = []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(balance(obs))
        out.append((obs.copy(), reward, terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            out.append((obs.copy(), "reset"))
    return out


def test_snapshot_restores_an_episode_started_with_a_seed():
    env = make_env("CartPole-v1")
    obs, _ = env.reset(seed=123)
    for _ in range(200):  # a long episode in progress
        obs, _, terminated, truncated, _ = env.step(balance(obs))
        assert not (terminated or truncated)
    snapshot = json.loads(json.dumps(env.snapshot()))  # what a checkpoint stores
    assert snapshot["start"]["seed"] == 123 and len(snapshot["actions"]) == 200

    restored = make_env("CartPole-v1")
    restored.reset(seed=999)  # a different episode, to be replaced
    np.testing.assert_array_equal(restored.restore(snapshot), obs)
    # on through the time limit at step 500 and into the next episode, reset from the env's RNG
    later = roll(env, obs, 400)
    assert any(step[1] == "reset" for step in later)
    same = roll(restored, obs, 400)
    assert len(same) == len(later)
    for x, y in zip(same, later, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]


def test_snapshot_restores_an_episode_started_by_autoreset_from_rng_state():
    envs = make_vector_env("CartPole-v1", 2)
    obs, _ = envs.reset(seed=5)
    rng = np.random.default_rng(1)
    ended = np.zeros(2, dtype=bool)
    while not ended.all():  # both envs have started a second episode by autoreset (no seed)
        obs, _, terminated, truncated, _ = envs.step(rng.integers(2, size=2))
        ended |= terminated | truncated
    for _ in range(100):  # long second episodes in progress
        obs, _, terminated, truncated, _ = envs.step([balance(o) for o in obs])
        assert not (terminated | truncated).any()
    snapshots = json.loads(json.dumps(snapshot_vector_env(envs)))
    assert all("rng_state" in s["start"] and "seed" not in s["start"] for s in snapshots)

    fresh = make_vector_env("CartPole-v1", 2)
    fresh.reset(seed=77)
    np.testing.assert_array_equal(restore_vector_env(fresh, snapshots), obs)
    # the restored envs go on identically, through further autoresets drawn from the restored RNG state
    later = rng.integers(2, size=(300, 2))
    for actions in later:
        a = envs.step(actions)
        b = fresh.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)


def test_restore_refuses_a_snapshot_that_does_not_replay():
    env = make_env("CartPole-v1")
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(1)  # always pushing right ends the episode quickly
        done = terminated or truncated
    snapshot = env.snapshot()  # includes the final action: replaying it would end the episode
    with pytest.raises(UserError, match="does not replay"):
        make_env("CartPole-v1").restore(snapshot)


def test_restore_vector_env_needs_one_snapshot_per_env():
    envs = make_vector_env("CartPole-v1", 2)
    envs.reset(seed=0)
    with pytest.raises(UserError, match="2 envs"):
        restore_vector_env(envs, snapshot_vector_env(envs)[:1])


@pytest.mark.parametrize("factory", [check_env_id, make_env, lambda env_id: make_vector_env(env_id, 2)])
def test_unknown_env_id_is_a_user_error_with_close_matches(factory):
    with pytest.raises(UserError, match="'CartPol-v1'") as err:
        factory("CartPol-v1")
    assert "did you mean" in str(err.value) and "CartPole-v1" in str(err.value)


def test_unknown_env_id_without_close_match():
    with pytest.raises(UserError, match="not a registered gymnasium environment") as err:
        check_env_id("Zzyzx-v9")
    assert "did you mean" not in str(err.value)


def test_env_kwargs_that_do_not_fit_are_a_user_error():
    with pytest.raises(UserError, match="CartPole-v1"):
        make_env("CartPole-v1", no_such_option=3)


def test_minatar_ids_give_channel_first_uint8_planes_and_replay_exactly():
    envs = make_vector_env("MinAtar/Breakout-v1", 2)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 4, 10, 10) and obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 1}
    rng, ended = np.random.default_rng(0), np.zeros(2, bool)
    while not ended.all():  # both envs in a second episode, begun by autoreset without a seed
        obs, _, terminated, truncated, _ = envs.step(rng.integers(3, size=2))
        ended |= terminated | truncated
    fresh = make_vector_env("MinAtar/Breakout-v1", 2)
    fresh.reset(seed=1)
    np.testing.assert_array_equal(restore_vector_env(fresh, snapshot_vector_env(envs)), obs)
    for actions in rng.integers(3, size=(200, 2)):  # and on identically, through more autoresets
        for x, y in zip(envs.step(actions)[:4], fresh.step(actions)[:4], strict=True):
            np.testing.assert_array_equal(x, y)


def test_ale_vector_env_is_atari_vector_env_and_refuses_to_restore():
    envs = make_vector_env("ALE/Pong-v5", 2, ale_vector_env=True)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8 and "lives" in info
    assert (obs[:, :3] == 0).all()  # AtariVectorEnv pads a new episode's stack with zeros
    with pytest.raises(UserError, match="cannot be resumed"):
        restore_vector_env(envs, snapshot_vector_env(envs))


def test_env_vector_auto_is_ale_for_several_atari_envs_and_sync_otherwise():
    from rl_lab.envs import vector_kind

    assert vector_kind("ALE/Pong-v5", 8) == "ale" and vector_kind("ALE/Pong-v5", 1) == "sync"
    assert vector_kind("CartPole-v1", 8) == "sync" and vector_kind("ALE/Pong-v5", 8, "async") == "async"
    assert vector_kind("ALE/Pong-v5", 1, "sync", ale_vector_env=True) == "ale"  # older configs' switch
    with pytest.raises(UserError, match="not an Atari game"):
        vector_kind("CartPole-v1", 2, "ale")


def test_env_vector_ale_for_a_non_atari_env_is_exit_2(tmp_path):
    from conftest import CARTPOLE_CONFIG, run_rl_lab, user_error_line

    result = run_rl_lab("train", CARTPOLE_CONFIG, "env.vector=ale", f"run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert "env.vector=ale" in user_error_line(result) and not (tmp_path / "r").exists()
