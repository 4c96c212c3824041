"""Sum-tree and proportional prioritized replay against brute force: sums, lookups, sampling law, weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CARTPOLE_CONFIG, TINY, run_rl_lab

from rl_lab.replay.frames import FrameReplay
from rl_lab.replay.prioritized import Prioritized, SumTree
from rl_lab.replay.uniform import ReplayBuffer


def test_sum_tree_sums_and_lookups_match_brute_force_with_duplicate_updates():
    rng = np.random.default_rng(0)
    tree, values = SumTree(37), np.zeros(37)  # not a power of two
    for _ in range(20):
        idx = rng.integers(0, 37, 16)  # with duplicates: the last write of a leaf wins
        new = rng.random(16) * rng.integers(0, 2, 16)  # some zeros
        tree.update(idx, new)
        for i, v in zip(idx, new, strict=True):
            values[i] = v
        assert tree.total == pytest.approx(values.sum())
        assert tree.min == (values[values > 0].min() if (values > 0).any() else np.inf)
        mass = rng.random(500) * values.sum()
        expected = np.searchsorted(np.cumsum(values), mass, side="right")
        np.testing.assert_array_equal(tree.find(mass), expected)


def filled(capacity: int = 64, alpha: float = 0.6, normalize: str = "buffer") -> Prioritized:
    buffer = Prioritized(ReplayBuffer(capacity, (2,), np.float32), alpha=alpha, eps=1e-6, normalize=normalize)
    rng = np.random.default_rng(1)
    for _ in range(capacity // 4):
        obs = rng.normal(size=(4, 2)).astype(np.float32)
        buffer.add(obs, rng.integers(2, size=4), np.ones(4, np.float32), obs, np.zeros(4, bool), np.zeros(4, bool))
    return buffer


def test_new_transitions_get_the_max_priority_and_updates_set_abs_td_plus_eps_to_the_alpha():
    buffer = filled(alpha=0.6)
    np.testing.assert_allclose(buffer.tree.values(np.arange(64)), 1.0)
    buffer.update_priorities(np.array([3, 5]), np.array([-2.0, 0.5]))
    assert buffer.tree.values(np.array([3, 5])) == pytest.approx([(2 + 1e-6) ** 0.6, (0.5 + 1e-6) ** 0.6])
    assert buffer.max_priority == pytest.approx(2 + 1e-6)
    obs = np.zeros((1, 2), np.float32)
    added, _ = buffer.add(obs, np.array([0]), np.zeros(1, np.float32), obs, np.zeros(1, bool), np.zeros(1, bool))
    assert buffer.tree.values(added) == pytest.approx([(2 + 1e-6) ** 0.6])  # the slot overwritten at the ring's head


def test_sampling_follows_priorities_and_weights_follow_the_formula():
    alpha, beta = 0.7, 0.5
    buffer = filled(alpha=alpha)
    td = np.random.default_rng(2).random(64) * 3
    buffer.update_priorities(np.arange(64), td)
    buffer.beta = beta
    batch = buffer.sample((500, 32), np.random.default_rng(3))
    probs = (td + 1e-6) ** alpha / ((td + 1e-6) ** alpha).sum()
    counts = np.bincount(batch.indices.ravel(), minlength=64)
    expected = probs * batch.indices.size
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 63 + 5 * np.sqrt(2 * 63), chi2  # stratified draws are even closer than multinomial ones
    # normalised by the largest weight over the buffer (Schaul et al. 2016), that of the least likely transition
    weights = (64 * probs[batch.indices]) ** -beta / (64 * probs.min()) ** -beta
    torch.testing.assert_close(batch.weights, torch.from_numpy(weights.astype(np.float32)))
    rarest = np.argmin(probs)
    without = ~(batch.indices == rarest).any(axis=1)
    assert without.any() and (batch.weights[torch.from_numpy(without)].amax(dim=1) < 0.99).all()
    # a batch's weights do not depend on what else it drew: each transition has one weight wherever it appears
    for i in np.unique(batch.indices):
        assert len(np.unique(batch.weights.numpy()[batch.indices == i])) == 1
    np.testing.assert_array_equal(batch.obs[..., 0].numpy(), buffer.buffer.obs[batch.indices, 0])


def test_batch_normalised_weights_keep_the_ratios_and_ignore_one_near_zero_td_error():
    """`per_weights: batch` (Dopamine): each batch's largest weight is 1, the ratios within it those of the formula.
    One transition with a near-zero TD error (MinAtar Breakout: the smallest priority 30x below the median after 30k
    steps) drags every buffer-normalised weight down, so Adam's eps swallows the updates; batch weights stay put."""
    td = np.random.default_rng(2).random(64) * 3 + 0.5
    batches = {}
    for normalize in ("buffer", "batch"):
        buffer = filled(alpha=0.5, normalize=normalize)
        buffer.update_priorities(np.arange(64), td)
        buffer.update_priorities(np.array([7]), np.array([1e-5]))  # one transition the network already predicts
        buffer.beta = 1.0
        batches[normalize] = buffer.sample((200, 32), np.random.default_rng(3))
    by_buffer, by_batch = batches["buffer"].weights, batches["batch"].weights
    np.testing.assert_array_equal(batches["buffer"].indices, batches["batch"].indices)  # the same draws
    torch.testing.assert_close(by_batch.amax(dim=1), torch.ones(200))
    torch.testing.assert_close(by_batch, by_buffer / by_buffer.amax(dim=1, keepdim=True))
    drew_it = torch.from_numpy((batches["batch"].indices == 7).any(axis=1))
    assert by_buffer[~drew_it].mean() < 0.02 < 0.5 < by_batch[~drew_it].mean()


def test_zero_priority_slots_are_never_sampled():
    buffer = filled()
    buffer.tree.update(np.arange(0, 64, 2), 0.0)  # e.g. frame slots without a transition
    idx = buffer.sample_indices((200, 32), np.random.default_rng(4))
    assert (idx % 2 == 1).all()


def test_state_dict_round_trip():
    buffer = filled()
    buffer.update_priorities(np.arange(10), np.arange(10.0))
    other = Prioritized(ReplayBuffer(64, (2,), np.float32), alpha=0.6)
    other.load_state_dict(buffer.state_dict())
    assert other.max_priority == buffer.max_priority
    np.testing.assert_array_equal(other.tree.tree, buffer.tree.tree)


@pytest.mark.parametrize("kind", ["uniform", "frames"])
def test_priorities_follow_their_transitions_into_a_larger_buffer(kind):
    """`--total-steps` may give a resumed run a larger replay (and sum-tree): each saved transition keeps its
    priority in whatever slot the larger buffer puts it."""

    def make(capacity):
        if kind == "uniform":
            return Prioritized(ReplayBuffer(capacity, (2,), np.float32), alpha=1.0)
        return Prioritized(FrameReplay(capacity, (2, 3, 3), num_envs=2), alpha=1.0)

    small, rng = make(20), np.random.default_rng(7)
    for t in range(40):  # rewards are ids; both kinds wrap
        frames = rng.integers(0, 255, (2, 2, 3, 3), dtype=np.uint8)
        obs = frames[..., 0, 0].astype(np.float32) if kind == "uniform" else frames
        ids = np.array([2 * t + 1, 2 * t + 2], np.float32)
        small.add(obs, np.zeros(2, np.int64), ids, obs, np.zeros(2, bool), np.array([t % 7 == 6] * 2))
    held = np.flatnonzero(small.tree.values(np.arange(small.tree.leaves)) > 0)
    held = held[held < small.buffer.capacity]
    small.update_priorities(held, small.buffer.rewards[held])  # priority = id + eps
    larger = make(64)
    larger.load_state_dict({k: np.array(v) for k, v in small.state_dict().items()})
    slots = np.flatnonzero(larger.tree.values(np.arange(larger.tree.leaves)) > 0)
    priorities = {int(r): p for r, p in zip(larger.buffer.rewards[slots], larger.tree.values(slots), strict=True)}
    assert priorities == {int(r): p for r, p in zip(small.buffer.rewards[held], small.tree.values(held), strict=True)}
    assert larger.tree.total == pytest.approx(small.tree.total) and larger.max_priority == small.max_priority


def test_checkpoints_holding_the_whole_tree_still_load():
    """Checkpoints written before priorities were saved per transition hold all of the sum-tree's leaves."""
    buffer = filled()
    buffer.update_priorities(np.arange(10), np.arange(10.0))
    state = buffer.state_dict()
    state["priorities"] = buffer.tree.tree[buffer.tree.leaves :].copy()
    other = Prioritized(ReplayBuffer(64, (2,), np.float32), alpha=0.6)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.tree.tree, buffer.tree.tree)


def test_a_prioritized_run_trains_on_to_a_larger_budget_with_a_larger_replay(tmp_path):
    """Its replay is sized to the 3000-step budget (buffer_size is larger); `--total-steps 5000` grows it
    (and its sum-tree, from 4096 leaves to 8192)."""
    run_dir = tmp_path / "run"
    per = ["agent.prioritized=true", "agent.buffer_size=100000", f"run.dir={run_dir}"]
    first = run_rl_lab("train", CARTPOLE_CONFIG, *TINY, *per, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    result = run_rl_lab("train", "--resume", run_dir, "--total-steps", "5000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["env_steps"] == 5000
