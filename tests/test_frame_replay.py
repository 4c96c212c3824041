"""FrameReplay against a naive buffer of full stacked observations; n-step returns against brute force; memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_lab.errors import UserError
from rl_lab.replay.frames import FrameReplay
from rl_lab.replay.uniform import ReplayBuffer

K, H, W = 4, 5, 6  # stack and (small) frame size
GAMMA = 0.9


def play(num_envs: int, steps: int, seed: int, pad: str, record: dict):
    """Random episodes (random lengths, terminations, truncations) of N envs, as a frame-stacking vector env
    with same-step autoreset emits them. Yields (obs, actions, rewards, next_obs, terminated, truncated) per step;
    `record` gets every transition by id (its reward) and each env's episodes as lists of ids."""
    rng = np.random.default_rng(seed)
    counter = iter(range(1, 10**9))

    def first_stack():
        frame = rng.integers(0, 256, (H, W), dtype=np.uint8)
        stack = np.repeat(frame[None], K, 0) if pad == "repeat" else np.zeros((K, H, W), np.uint8)
        stack[-1] = frame
        return stack

    obs = np.stack([first_stack() for _ in range(num_envs)])
    episodes = record["episodes"] = [[[]] for _ in range(num_envs)]  # per env, per episode: ids in order
    log = record["log"] = {}
    for _ in range(steps):
        new = rng.integers(0, 256, (num_envs, H, W), dtype=np.uint8)
        final_obs = np.concatenate([obs[:, 1:], new[:, None]], axis=1)
        ids = np.array([next(counter) for _ in range(num_envs)], dtype=np.float32)
        end = rng.random(num_envs)
        terminated, truncated = end < 0.04, (end >= 0.04) & (end < 0.07)
        actions = rng.integers(0, 6, num_envs)
        for e in range(num_envs):
            log[int(ids[e])] = (obs[e].copy(), actions[e], final_obs[e].copy(), terminated[e], truncated[e])
            episodes[e][-1].append(int(ids[e]))
            if terminated[e] or truncated[e]:
                episodes[e].append([])
        yield obs, actions, ids, final_obs, terminated, truncated
        obs = final_obs.copy()
        for e in np.flatnonzero(terminated | truncated):
            obs[e] = first_stack()


def brute_nstep(record: dict, tid: int, n: int, stored: set[int]):
    """(return, id of the last step, gamma^m) by walking the episode list of transition `tid`."""
    log = record["log"]
    for env_episodes in record["episodes"]:
        for ep in env_episodes:
            if tid in ep:
                i = ep.index(tid)
                ret, disc, last = 0.0, 1.0, tid
                for t in ep[i : i + n]:
                    if t not in stored:  # not yet stored: bootstrap from the previous step
                        break
                    ret += disc * t  # the reward of transition t is its id
                    disc *= GAMMA
                    last = t
                    if log[t][3] or log[t][4]:
                        break
                return ret, last, disc
    raise AssertionError(tid)


@pytest.mark.parametrize("pad", ["repeat", "zero"])
@pytest.mark.parametrize("n_step", [1, 3])
def test_equivalent_to_a_naive_buffer_of_stacks_across_wrap_around(pad, n_step):
    num_envs, capacity, steps = 3, 60, 150  # 450 transitions through ~70 slots: the rings wrap many times
    frames = FrameReplay(capacity, (K, H, W), num_envs, n_step=n_step, gamma=GAMMA, pad=pad)
    naive = ReplayBuffer(num_envs * steps, (K, H, W), np.uint8)  # never wraps: every transition ever stored
    checked, record = 0, {}
    for t, step in enumerate(play(num_envs, steps, seed=1, pad=pad, record=record)):
        frames.add(*step)
        naive.add(*step)
        if t % 10 != 9:
            continue
        stored = set(frames.rewards[frames.has_transition].astype(int).tolist())
        assert set(step[2].astype(int).tolist()) <= stored  # the newest transitions
        assert len(stored) >= min(len(naive), 0.7 * capacity)  # an episode end or a ring head costs a few slots
        idx = np.flatnonzero(frames.has_transition)
        batch = frames.gather(idx)
        by_id = {int(r): i for i, r in enumerate(naive.rewards[: len(naive)])}
        ids = frames.rewards[idx].astype(int)
        ref = naive.gather(np.array([by_id[i] for i in ids]))
        assert torch.equal(batch.obs, ref.obs)
        assert torch.equal(batch.actions, ref.actions)
        if n_step == 1:
            assert torch.equal(batch.next_obs, ref.next_obs)
            assert torch.equal(batch.terminated, ref.terminated) and torch.equal(batch.truncated, ref.truncated)
            assert batch.discount is None
        else:
            for row, tid in enumerate(ids):
                ret, last, disc = brute_nstep(record, tid, n_step, stored)
                assert batch.rewards[row].item() == pytest.approx(ret, rel=1e-5)
                assert batch.discount[row].item() == pytest.approx(disc, rel=1e-6)
                _, _, last_next, last_term, last_trunc = record["log"][last]
                assert torch.equal(batch.next_obs[row], torch.from_numpy(last_next))
                assert (batch.terminated[row].item(), batch.truncated[row].item()) == (last_term, last_trunc)
        checked += 1
    assert checked == steps // 10


@pytest.mark.parametrize("n_step", [1, 3])
def test_uniform_replay_nstep_matches_brute_force_across_wrap_around(n_step):
    num_envs, capacity = 3, 40
    buffer = ReplayBuffer(capacity, (K, H, W), np.uint8, n_step=n_step, gamma=GAMMA)
    record = {}
    for step in play(num_envs, 50, seed=2, pad="repeat", record=record):
        buffer.add(*step)
    stored = set(buffer.rewards.astype(int).tolist())
    idx = np.arange(capacity)
    batch = buffer.gather(idx)
    for row, tid in enumerate(buffer.rewards.astype(int)):
        ret, last, disc = brute_nstep(record, tid, n_step, stored)
        assert batch.rewards[row].item() == pytest.approx(ret, rel=1e-5)
        assert torch.equal(batch.next_obs[row], torch.from_numpy(record["log"][last][2]))
        assert batch.terminated[row].item() == record["log"][last][3]
        if n_step > 1:
            assert batch.discount[row].item() == pytest.approx(disc, rel=1e-6)


def test_sampling_is_uniform_over_stored_transitions_only():
    frames = FrameReplay(30, (K, H, W), 2)
    for step in play(2, 40, seed=3, pad="repeat", record={}):
        frames.add(*step)
    valid = np.flatnonzero(frames.has_transition)
    draws = frames.sample_indices(40_000, np.random.default_rng(0))
    assert set(draws.tolist()) == set(valid.tolist())
    counts = np.bincount(draws, minlength=frames.capacity)[valid]
    expected = len(draws) / len(valid)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < len(valid) + 5 * np.sqrt(2 * len(valid)), chi2  # ~5 sigma above the chi2 mean


def test_state_dict_round_trip_continues_identically():
    one, two = FrameReplay(30, (K, H, W), 2, n_step=2), FrameReplay(30, (K, H, W), 2, n_step=2)
    steps = list(play(2, 45, seed=4, pad="repeat", record={}))
    for step in steps[:30]:
        one.add(*step)
    two.load_state_dict({k: np.array(v) for k, v in one.state_dict().items()})
    for step in steps[30:]:
        one.add(*step)
        two.add(*step)
    a, b = one.sample(64, np.random.default_rng(1)), two.sample(64, np.random.default_rng(1))
    for name in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated", "discount"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_load_state_dict_of_another_shape_is_a_user_error():
    one = FrameReplay(30, (K, H, W), 2)
    for step in play(2, 10, seed=5, pad="repeat", record={}):
        one.add(*step)
    with pytest.raises(UserError, match="replay buffer field"):
        FrameReplay(30, (K, H, W), 3).load_state_dict(one.state_dict())


def test_atari_memory_per_transition_is_under_7_2_kb_and_8x_less_than_stacks():
    capacity = 10_000
    lean = FrameReplay(capacity, (4, 84, 84), num_envs=1)
    per_transition = lean.nbytes() / capacity
    assert per_transition <= 7200, per_transition
    stacked = 2 * 4 * 84 * 84  # obs and next_obs stored whole, as a naive buffer (and SB3) does
    assert stacked / per_transition > 7.9


@pytest.mark.parametrize(
    "make", [lambda: FrameReplay(10**9, (4, 84, 84), 1), lambda: ReplayBuffer(10**9, (4, 84, 84), np.uint8)]
)
def test_buffer_that_cannot_fit_is_refused_before_allocating(make):
    with pytest.raises(UserError, match=r"agent.buffer_size=\d+ needs .* GiB .* lower agent.buffer_size"):
        make()


@pytest.mark.parametrize("vector", ["sync", "async", "ale"])
def test_replay_of_real_breakout_play_holds_exactly_the_stacks_acted_on_and_received(vector):
    """Random Breakout play through the off-policy loop: lost lives (terminal for learning, not for the game),
    game overs and time limits. Every stored transition, as sampling gathers it, must hold byte for byte the stack
    the agent acted on and the one it received: stacks restart at the env's episode starts (never at a lost life)
    and are padded the way this kind of vector env pads them."""
    from rl_lab.loader import build_trainer, config_from_dict

    config = config_from_dict(
        {
            "env": {"id": "ALE/Breakout-v5", "num_envs": 2, "vector": vector, "kwargs": {"max_episode_steps": 1000}},
            "agent": {
                "name": "dqn",
                "encoder": {"name": "nature_cnn", "kwargs": {"features": 8, "convs": [[4, 4, 4], [4, 4, 2]]}},
                "buffer_size": 2000,  # more than the run stores: no transition is overwritten
                "exploration_initial": 1.0,
                "exploration_final": 1.0,
            },
            "device": "cpu",
            "torch_threads": 1,
        }
    )
    trainer = build_trainer(config)
    played = [[], []]  # per env: (stack acted on, stack received)
    lost_lives = episode_ends = 0
    for _ in range(400):
        lives = trainer.signals.lives.copy()
        obs, next_obs = trainer.step()
        ended = trainer.episode_length == 0
        lost_lives += int(((trainer.signals.lives < lives) & ~ended).sum())
        episode_ends += int(ended.sum())
        for e in range(2):
            played[e].append((obs[e], next_obs[e]))
    trainer.envs.close()
    assert lost_lives >= 4 and episode_ends >= 2, (lost_lives, episode_ends)  # both boundaries are exercised
    buffer = trainer.buffer
    assert len(buffer) == 800
    for e in range(2):
        ring = np.arange(e * buffer.slots, e * buffer.slots + buffer.size[e])  # in time order: no wrap-around
        batch = buffer.gather(ring[buffer.has_transition[ring]])
        np.testing.assert_array_equal(batch.obs.numpy(), np.stack([o for o, _ in played[e]]))
        np.testing.assert_array_equal(batch.next_obs.numpy(), np.stack([n for _, n in played[e]]))


@pytest.mark.parametrize("n_step", [1, 3])
def test_rings_saved_full_load_into_a_larger_buffer_holding_every_transition_exactly(n_step):
    """A run given a longer budget (`--total-steps`) may get a larger replay: rings that wrapped at fewer slots are
    unrolled, so every transition keeps its stacks, next stack and n-step return, and later steps overwrite none."""
    record = {}
    steps = list(play(2, 60, seed=6, pad="repeat", record=record))
    small = FrameReplay(30, (K, H, W), 2, n_step=n_step, gamma=GAMMA)
    for step in steps[:45]:  # 90 frames through 2 rings of 19 slots: both wrapped
        small.add(*step)
    larger = FrameReplay(100, (K, H, W), 2, n_step=n_step, gamma=GAMMA)
    larger.load_state_dict({k: np.array(v) for k, v in small.state_dict().items()})
    kept = set(small.rewards[small.has_transition].astype(int).tolist())
    assert set(larger.rewards[larger.has_transition].astype(int).tolist()) == kept
    for step in steps[45:]:
        larger.add(*step)
    stored = set(larger.rewards[larger.has_transition].astype(int).tolist())
    assert stored == kept | {int(t) for step in steps[45:] for t in step[2]}  # nothing overwritten
    idx = np.flatnonzero(larger.has_transition)
    batch = larger.gather(idx)
    for row, tid in enumerate(larger.rewards[idx].astype(int)):
        obs, action, _, _, _ = record["log"][tid]
        ret, last, disc = brute_nstep(record, tid, n_step, stored)
        assert torch.equal(batch.obs[row], torch.from_numpy(obs)) and batch.actions[row].item() == action
        assert torch.equal(batch.next_obs[row], torch.from_numpy(record["log"][last][2]))
        if n_step > 1:
            assert batch.rewards[row].item() == pytest.approx(ret, rel=1e-5)
            assert batch.discount[row].item() == pytest.approx(disc, rel=1e-6)
