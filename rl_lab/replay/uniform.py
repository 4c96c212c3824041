"""Uniform experience replay: one preallocated numpy ring buffer shared by the off-policy agents.

Also what every replay shares: the Batch they return, n-step returns computed at sampling time from stored
one-step transitions, and the pre-flight memory check that refuses a buffer the machine cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rl_lab.errors import UserError


@dataclass
class Batch:
    """Transitions as tensors on the training device; leading dims are (batch,) or (n_batches, batch)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor  # the episode really ended: no bootstrap
    truncated: torch.Tensor  # cut by a time limit: bootstrap from next_obs
    discount: torch.Tensor | None = None  # gamma^m for an m-step return (n-step replay); None: one step, gamma
    weights: torch.Tensor | None = None  # importance-sampling weights (prioritized replay)
    indices: np.ndarray | None = None  # sampled slots, to update their priorities

    def row(self, g: int) -> Batch:
        """Batch g of a (n_batches, batch) sample."""
        return Batch(*(None if v is None else v[g] for v in vars(self).values()))


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes that can be allocated now: free GPU memory, or MemAvailable of the host."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(capacity: int, bytes_per_transition: float, device: torch.device | str = "cpu") -> None:
    """Refuse, before allocating, a buffer that cannot fit (a UserError the CLI prints as one line)."""
    need, free = capacity * bytes_per_transition, available_memory(device)
    if need > free:
        fit = int(free / bytes_per_transition)
        raise UserError(
            f"agent.buffer_size={capacity} needs {need / 2**30:.1f} GiB of {torch.device(device).type} memory for "
            f"replay ({bytes_per_transition:.0f} bytes per transition) but only {free / 2**30:.1f} GiB is available; "
            f"lower agent.buffer_size (at most ~{fit})"
        )


def nstep_returns(buffer, idx: np.ndarray, n: int, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-step returns from one-step transitions: (sum_k gamma^k r_k, slot of the last step, gamma^m).

    The sum stops after a terminated or truncated step (the last step's flags then decide the bootstrap) and at
    the newest stored transition (bootstrap from its next_obs). `buffer.successor(idx)` gives the slot of the
    same env's next transition and whether it is stored.
    """
    ret = np.zeros(idx.shape, dtype=np.float32)
    discount = np.ones(idx.shape, dtype=np.float32)
    last, cur = idx.copy(), idx.copy()
    live = np.ones(idx.shape, dtype=bool)
    for k in range(n):
        ret += np.where(live, discount * buffer.rewards[cur], 0.0).astype(np.float32)
        last = np.where(live, cur, last)
        discount = np.where(live, discount * np.float32(gamma), discount)
        live &= ~(buffer.terminated[cur] | buffer.truncated[cur])
        if k + 1 < n:
            nxt, stored = buffer.successor(cur)
            live &= stored
            cur = np.where(live, nxt, cur)
    return ret, last, discount


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Host to device; through pinned memory and a non-blocking copy when the device is a GPU."""
    if torch.device(device).type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class ReplayBuffer:
    """Ring buffer of (s, a, r, s', terminated, truncated) with vectorised add and sample.

    `next_obs` is stored apart from `obs` so the true final observation of an episode is kept even though the
    vector env has already reset. Sampling gathers with numpy fancy indexing, no per-item Python loop.
    """

    FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple,
        obs_dtype,
        action_shape: tuple = (),
        action_dtype=np.int64,
        n_step: int = 1,
        gamma: float = 0.99,
    ):
        per_transition = 2 * np.dtype(obs_dtype).itemsize * int(np.prod(obs_shape)) + np.dtype(action_dtype).itemsize
        check_memory(capacity, per_transition + 6)
        self.capacity = capacity
        self.n_step, self.gamma = n_step, gamma
        self.stride = 1  # transitions per add (parallel envs): an env's next transition is `stride` slots on
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros_like(self.obs)
        self.actions = np.zeros((capacity, *action_shape), dtype=action_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.bool_)
        self.truncated = np.zeros(capacity, dtype=np.bool_)
        self.pos = 0  # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, rewards, next_obs, terminated, truncated, episode_end=None) -> None:
        """Store one step of N parallel envs (arrays with a leading env dimension). `episode_end` (where the env
        really ended an episode) matters only to buffers that rebuild observations (FrameReplay)."""
        n = len(rewards)
        self.stride = n
        slots = (self.pos + np.arange(n)) % self.capacity
        self.obs[slots] = obs
        self.actions[slots] = actions
        self.rewards[slots] = rewards
        self.next_obs[slots] = next_obs
        self.terminated[slots] = terminated
        self.truncated[slots] = truncated
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return slots, slots[:0]  # slots that now hold a transition, slots that lost one (for prioritized replay)

    def sample_indices(self, shape: int | tuple, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.size, size=shape)

    def cut_episodes(self) -> None:
        """The envs' episodes stop here (a resumed run restarts them): each env's newest transition counts as
        truncated, so it bootstraps from its next_obs and no n-step return runs on into the next episode."""
        if self.size:
            self.truncated[(self.pos - 1 - np.arange(min(self.stride, self.size))) % self.capacity] = True

    def successor(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slot of the same env's next transition, and whether it has been stored (written after idx)."""
        newer = (self.pos - 1 - idx) % self.capacity  # transitions stored after idx
        return (idx + self.stride) % self.capacity, newer >= self.stride

    def sample(self, shape: int | tuple, rng: np.random.Generator, device: torch.device | str = "cpu") -> Batch:
        """Uniformly sample `shape` transitions, e.g. 64 or (gradient_steps, 64) to take many batches at once."""
        return self.gather(self.sample_indices(shape, rng), device)

    def gather(self, idx: np.ndarray, device: torch.device | str = "cpu") -> Batch:
        """The transitions in slots `idx` (n-step ones when n_step > 1) as tensors on `device`."""
        if self.n_step == 1:
            return Batch(*(to_device(torch.from_numpy(getattr(self, name)[idx]), device) for name in self.FIELDS))
        ret, last, discount = nstep_returns(self, idx, self.n_step, self.gamma)
        arrays = (self.obs[idx], self.actions[idx], ret, self.next_obs[last], self.terminated[last])
        arrays += (self.truncated[last], discount)
        return Batch(*(to_device(torch.from_numpy(a), device) for a in arrays))

    def state_dict(self) -> dict[str, np.ndarray]:
        """The filled part in chronological slot order plus position, for a checkpoint."""
        arrays = {name: getattr(self, name)[: self.size] for name in self.FIELDS}
        arrays["pos_size"] = np.array([self.pos, self.size], dtype=np.int64)
        return arrays

    def stored_slots(self) -> np.ndarray:
        """The slot of each transition `state_dict()` saves, in its order (a wrapper saves per-slot data beside it)."""
        return np.arange(self.size)

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Restore from `state_dict()`; every field is checked before any is written, so a mismatch changes nothing.
        Returns the slot each saved transition now occupies."""
        missing = [name for name in (*self.FIELDS, "pos_size") if name not in arrays]
        if missing:
            raise UserError(f"checkpoint replay buffer lacks {', '.join(missing)} (the checkpoint is incomplete)")
        pos, size = (int(v) for v in arrays["pos_size"])
        for name in self.FIELDS:
            target, saved = getattr(self, name), arrays[name]
            if saved.shape != (size, *target.shape[1:]) or saved.dtype != target.dtype or size > self.capacity:
                raise UserError(
                    f"checkpoint replay buffer field {name!r} has shape {saved.shape}/{saved.dtype}, "
                    f"the config expects (<={self.capacity}, {target.shape[1:]})/{target.dtype}"
                )
        # a ring that wrapped at another capacity (a run given a longer budget holds more): oldest first
        unroll = size < self.capacity and pos != size
        order = (pos + np.arange(size)) % size if unroll else slice(None)
        for name in self.FIELDS:
            getattr(self, name)[:size] = arrays[name][order]
        self.pos, self.size = (size if unroll else pos), size
        return (np.arange(size) - pos) % size if unroll else np.arange(size)

    def latest(self, n: int) -> dict[str, np.ndarray]:
        """The `n` newest transitions, oldest first, as numpy arrays (for on-line learners, e.g. tabular Q)."""
        idx = (self.pos - n + np.arange(n)) % self.capacity
        return {name: getattr(self, name)[idx] for name in self.FIELDS}
