"""Uniform experience replay: one preallocated numpy ring buffer shared by the off-policy agents."""

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


class ReplayBuffer:
    """Ring buffer of (s, a, r, s', terminated, truncated) with vectorised add and sample.

    `next_obs` is stored apart from `obs` so the true final observation of an episode is kept even though the
    vector env has already reset. Sampling gathers with numpy fancy indexing, no per-item Python loop.
    """

    FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")

    def __init__(self, capacity: int, obs_shape: tuple, obs_dtype, action_shape: tuple = (), action_dtype=np.int64):
        self.capacity = capacity
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

    def add(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        """Store one step of N parallel envs (arrays with a leading env dimension)."""
        n = len(rewards)
        slots = (self.pos + np.arange(n)) % self.capacity
        self.obs[slots] = obs
        self.actions[slots] = actions
        self.rewards[slots] = rewards
        self.next_obs[slots] = next_obs
        self.terminated[slots] = terminated
        self.truncated[slots] = truncated
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample_indices(self, shape: int | tuple, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.size, size=shape)

    def sample(self, shape: int | tuple, rng: np.random.Generator, device: torch.device | str = "cpu") -> Batch:
        """Uniformly sample `shape` transitions, e.g. 64 or (gradient_steps, 64) to take many batches at once."""
        idx = self.sample_indices(shape, rng)
        pin = torch.device(device).type == "cuda"

        def to_tensor(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(array[idx])
            return tensor.pin_memory().to(device, non_blocking=True) if pin else tensor.to(device)

        return Batch(*(to_tensor(getattr(self, name)) for name in self.FIELDS))

    def state_dict(self) -> dict[str, np.ndarray]:
        """The filled part in chronological slot order plus position, for a checkpoint."""
        arrays = {name: getattr(self, name)[: self.size] for name in self.FIELDS}
        arrays["pos_size"] = np.array([self.pos, self.size], dtype=np.int64)
        return arrays

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore from `state_dict()`; every field is checked before any is written, so a mismatch changes nothing."""
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
        for name in self.FIELDS:
            getattr(self, name)[:size] = arrays[name]
        self.pos, self.size = pos, size
