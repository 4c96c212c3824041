"""ReplayBuffer: ring order, uniform sampling of stored transitions only, vectorised add, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_lab.errors import UserError
from rl_lab.replay.uniform import ReplayBuffer

OBS_SHAPE = (3,)


def transition(k: int) -> dict:
    """Transition number k (k >= 1): every field encodes k, so a sampled row shows which transition it is."""
    return {
        "obs": np.full(OBS_SHAPE, k, dtype=np.float32),
        "actions": k % 5,
        "rewards": float(k) / 10,
        "next_obs": np.full(OBS_SHAPE, -k, dtype=np.float32),
        "terminated": k % 3 == 0,
        "truncated": k % 4 == 0,
    }


def add(buffer: ReplayBuffer, ks: list[int]) -> None:
    """One vectorised add of len(ks) envs."""
    rows = [transition(k) for k in ks]
    buffer.add(
        np.stack([r["obs"] for r in rows]),
        np.array([r["actions"] for r in rows]),
        np.array([r["rewards"] for r in rows], dtype=np.float32),
        np.stack([r["next_obs"] for r in rows]),
        np.array([r["terminated"] for r in rows]),
        np.array([r["truncated"] for r in rows]),
    )


def new_buffer(capacity: int) -> ReplayBuffer:
    return ReplayBuffer(capacity, OBS_SHAPE, np.float32)


def assert_rows_consistent(batch) -> np.ndarray:
    """Every sampled row must be one whole transition (fields gathered with the same index); returns its ids."""
    ids = batch.obs[..., 0].numpy().astype(int)
    expected = [transition(k) for k in ids.ravel()]
    assert torch.equal(batch.obs, torch.from_numpy(np.stack([e["obs"] for e in expected]).reshape(batch.obs.shape)))
    assert torch.equal(
        batch.next_obs, torch.from_numpy(np.stack([e["next_obs"] for e in expected]).reshape(batch.obs.shape))
    )
    assert batch.actions.numpy().ravel().tolist() == [e["actions"] for e in expected]
    np.testing.assert_allclose(batch.rewards.numpy().ravel(), [e["rewards"] for e in expected], rtol=1e-6)
    assert batch.terminated.numpy().ravel().tolist() == [e["terminated"] for e in expected]
    assert batch.truncated.numpy().ravel().tolist() == [e["truncated"] for e in expected]
    return ids


def test_wrap_around_overwrites_oldest_first_like_a_reference_ring():
    capacity = 7
    buffer, reference = new_buffer(capacity), [None] * capacity  # reference: slot -> transition id
    k, written = 1, 0
    for n in [1, 3, 2, 4, 1, 5, 3, 2]:  # vectorised adds whose slots straddle the end of the ring
        ks = list(range(k, k + n))
        add(buffer, ks)
        for kk in ks:
            reference[written % capacity] = kk
            written += 1
        k += n
        assert len(buffer) == min(written, capacity)
        assert buffer.pos == written % capacity
        filled = [r for r in reference if r is not None]
        assert buffer.obs[: len(buffer), 0].astype(int).tolist() == filled
        assert buffer.next_obs[: len(buffer), 0].astype(int).tolist() == [-r for r in filled]
    # after 21 transitions the buffer holds exactly the newest 7
    assert sorted(buffer.obs[:, 0].astype(int).tolist()) == list(range(written - capacity + 1, written + 1))


def test_sampling_returns_only_stored_transitions_before_the_buffer_is_full():
    buffer = new_buffer(100)
    add(buffer, list(range(1, 8)))  # 7 of 100 slots; the rest are zeros that must never be sampled
    batch = buffer.sample(5000, np.random.default_rng(0))
    ids = assert_rows_consistent(batch)
    assert set(ids.ravel().tolist()) == set(range(1, 8))


def test_sampling_after_wrap_around_covers_the_buffer_uniformly():
    capacity, draws = 50, 50_000
    buffer = new_buffer(capacity)
    for start in range(1, 131, 10):  # 130 transitions through 50 slots
        add(buffer, list(range(start, start + 10)))
    batch = buffer.sample(draws, np.random.default_rng(123))
    ids = assert_rows_consistent(batch).ravel()
    stored = np.arange(81, 131)  # the newest 50; 1..80 were overwritten
    assert set(ids.tolist()) == set(stored.tolist())
    counts = np.array([(ids == k).sum() for k in stored])
    expected = draws / capacity
    chi2 = ((counts - expected) ** 2 / expected).sum()
    # 49 degrees of freedom: P(chi2 > 90) < 0.001 for a uniform sampler; a sampler that favoured half the
    # slots by even 10 % would give ~250
    assert chi2 < 90, (chi2, counts)


def test_terminated_and_truncated_are_stored_apart():
    buffer = new_buffer(8)
    flags = [(True, False), (False, True), (False, False), (True, True)]
    buffer.add(
        np.zeros((4, *OBS_SHAPE), dtype=np.float32),
        np.zeros(4, dtype=np.int64),
        np.zeros(4, dtype=np.float32),
        np.zeros((4, *OBS_SHAPE), dtype=np.float32),
        np.array([t for t, _ in flags]),
        np.array([u for _, u in flags]),
    )
    assert buffer.terminated[:4].tolist() == [True, False, False, True]
    assert buffer.truncated[:4].tolist() == [False, True, False, True]


def test_vectorised_add_stores_each_env_in_its_own_slot():
    buffer = new_buffer(10)
    add(buffer, [1, 2, 3, 4])  # 4 envs in one step
    add(buffer, [5, 6, 7, 8])
    assert len(buffer) == 8 and buffer.pos == 8
    assert buffer.obs[:8, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert buffer.actions[:8].tolist() == [k % 5 for k in range(1, 9)]
    add(buffer, [9, 10, 11, 12])  # wraps: 11 and 12 overwrite slots 0 and 1
    assert len(buffer) == 10 and buffer.pos == 2
    assert buffer.obs[:, 0].tolist() == [11, 12, 3, 4, 5, 6, 7, 8, 9, 10]


def test_sample_with_leading_shape_g_b():
    buffer = new_buffer(20)
    add(buffer, list(range(1, 16)))
    g, b = 3, 7
    batch = buffer.sample((g, b), np.random.default_rng(1))
    assert batch.obs.shape == (g, b, *OBS_SHAPE) and batch.next_obs.shape == (g, b, *OBS_SHAPE)
    for name in ("actions", "rewards", "terminated", "truncated"):
        assert getattr(batch, name).shape == (g, b), name
    assert batch.obs.dtype == torch.float32 and batch.actions.dtype == torch.int64
    assert batch.rewards.dtype == torch.float32 and batch.terminated.dtype == torch.bool
    ids = assert_rows_consistent(batch)
    assert len({tuple(row) for row in ids.tolist()}) == g, "the G batches should be different draws"


@pytest.mark.parametrize("n_added", [5, 23])  # before and after wrap-around
def test_state_dict_round_trip(n_added):
    capacity = 10
    buffer = new_buffer(capacity)
    for k in range(1, n_added + 1):
        add(buffer, [k])
    state = {name: array.copy() for name, array in buffer.state_dict().items()}

    restored = new_buffer(capacity)
    restored.load_state_dict(state)
    assert (len(restored), restored.pos) == (len(buffer), buffer.pos)
    for name in ReplayBuffer.FIELDS:
        np.testing.assert_array_equal(getattr(restored, name)[: len(buffer)], getattr(buffer, name)[: len(buffer)])
    # both continue identically: the next adds land in the same slots and the same seed samples the same rows
    for b in (buffer, restored):
        add(b, [100, 101, 102])
    for name in ReplayBuffer.FIELDS:
        np.testing.assert_array_equal(getattr(restored, name)[: len(buffer)], getattr(buffer, name)[: len(buffer)])
    one, two = buffer.sample(64, np.random.default_rng(5)), restored.sample(64, np.random.default_rng(5))
    for name in ReplayBuffer.FIELDS:
        assert torch.equal(getattr(one, name), getattr(two, name)), name


def test_a_wrapped_ring_loads_oldest_first_into_a_larger_buffer():
    """A run given a longer budget (`--total-steps`) may get a larger replay: the saved ring, wrapped at 10, is
    unrolled so the next transitions overwrite nothing and no empty slot is ever sampled."""
    small = new_buffer(10)
    add(small, list(range(1, 24)))  # 14..23 kept, the oldest (14) at slot 3
    larger = new_buffer(16)
    larger.load_state_dict(small.state_dict())
    add(larger, [100, 101, 102])
    assert (len(larger), larger.pos) == (13, 13)
    np.testing.assert_allclose(larger.rewards[:13], np.array([*range(14, 24), 100, 101, 102], np.float32) / 10)


@pytest.mark.parametrize(
    "other",
    [
        lambda: ReplayBuffer(10, (4,), np.float32),  # a different observation shape
        lambda: ReplayBuffer(10, (3,), np.uint8),  # a different observation dtype
        lambda: ReplayBuffer(4, (3,), np.float32),  # too small for the saved transitions
        lambda: ReplayBuffer(10, (3,), np.float32, action_dtype=np.int32),  # found after obs was checked
    ],
    ids=["obs_shape", "obs_dtype", "capacity", "action_dtype"],
)
def test_load_state_dict_mismatch_is_a_user_error(other):
    buffer = new_buffer(10)
    add(buffer, list(range(1, 7)))
    target = other()
    before = {name: getattr(target, name).copy() for name in ReplayBuffer.FIELDS}
    with pytest.raises(UserError, match="replay buffer"):
        target.load_state_dict(buffer.state_dict())
    assert len(target) == 0
    for name in ReplayBuffer.FIELDS:
        np.testing.assert_array_equal(getattr(target, name), before[name])


def test_load_state_dict_with_a_missing_field_is_a_user_error():
    buffer = new_buffer(10)
    add(buffer, [1, 2])
    state = buffer.state_dict()
    del state["truncated"]
    with pytest.raises(UserError, match="truncated"):
        new_buffer(10).load_state_dict(state)
