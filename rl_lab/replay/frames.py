"""Memory-lean replay for stacked frames (Atari): each frame is stored once, stacks are rebuilt by index.

A stacked observation of k frames shares k-1 of them with its neighbours, and next_obs is the next slot's
stack, so storing full stacks twice (what SB3 does) costs 2k times the memory. Here each env has a ring of
single uint8 frames in time order, one slot per observation; a slot also holds the transition taken from that
observation and how many of the previous frames belong to the same episode (so a stack at an episode start
never shows frames of the previous episode). An episode's final observation takes a slot of its own (it is
the next_obs of the last transition, needed to bootstrap after a truncation) and holds no transition. 84x84
frames cost 7,056 bytes plus 9 bytes of transition data per slot. Frames can live on the GPU.
"""

from __future__ import annotations

import numpy as np
import torch

from rl_lab.errors import UserError
from rl_lab.replay.uniform import Batch, check_memory, nstep_returns, to_device


class FrameReplay:
    FIELDS = ("actions", "rewards", "terminated", "truncated", "offset", "has_transition")
    SLOT_BYTES = 9  # the FIELDS of one slot: uint8 action, float32 reward, three flags, uint8 offset

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, int, int],
        num_envs: int,
        n_step: int = 1,
        gamma: float = 0.99,
        pad: str = "repeat",  # how the env pads a stack at an episode start: "repeat" its first frame, or "zero"
        device: torch.device | str = "cpu",  # where frames are kept
    ):
        self.stack, *frame_shape = obs_shape
        self.num_envs, self.n_step, self.gamma, self.pad = num_envs, n_step, gamma, pad
        self.slots = -(-capacity // num_envs) + self.stack  # per env; a few spare for the frames being rebuilt
        self.capacity = self.slots * num_envs
        total = self.capacity
        self.device = torch.device(device)
        self.frame_bytes = int(np.prod(frame_shape))
        scale = total / capacity  # slots per transition asked for
        if self.device.type == "cpu":
            check_memory(capacity, scale * (self.frame_bytes + self.SLOT_BYTES))
        else:
            check_memory(capacity, scale * self.frame_bytes, self.device)
            check_memory(capacity, scale * self.SLOT_BYTES)
        if self.device.type == "cpu":  # calloc'd: memory is taken as frames arrive, not for slots never filled
            self.frames = torch.from_numpy(np.zeros((total, *frame_shape), dtype=np.uint8))
        else:
            self.frames = torch.zeros((total, *frame_shape), dtype=torch.uint8, device=self.device)
        self.actions = np.zeros(total, dtype=np.uint8)
        self.rewards = np.zeros(total, dtype=np.float32)
        self.terminated = np.zeros(total, dtype=np.bool_)
        self.truncated = np.zeros(total, dtype=np.bool_)
        self.offset = np.zeros(total, dtype=np.uint8)  # earlier frames of the same episode in the stack (<= k-1)
        self.has_transition = np.zeros(total, dtype=np.bool_)
        self.pos = np.zeros(num_envs, dtype=np.int64)  # next slot to write, per env ring
        self.size = np.zeros(num_envs, dtype=np.int64)  # slots written, per env ring
        self.episode_start = np.ones(num_envs, dtype=np.bool_)  # the next add's obs begins an episode
        self.base = np.arange(num_envs) * self.slots

    def nbytes(self) -> int:
        """Bytes held by the buffer (frames and transition data)."""
        arrays = sum(getattr(self, name).nbytes for name in self.FIELDS)
        return self.frames.numel() * self.frames.element_size() + arrays

    def __len__(self) -> int:
        return int(np.count_nonzero(self.has_transition))

    def _write(self, envs: np.ndarray, frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Write one frame per env in `envs` at its ring's head; returns the slots that lost their transition."""
        slots = self.base[envs] + self.pos[envs]
        self.frames[torch.from_numpy(slots)] = torch.as_tensor(frames, device=self.device)
        self.offset[slots] = offsets
        # The oldest slots after the head rebuild their stacks from frames before it, which are now overwritten.
        ahead = self.base[envs, None] + (self.pos[envs, None] + np.arange(1, self.stack)) % self.slots
        broken = ahead[self.offset[ahead] >= np.arange(1, self.stack)]
        lost = np.concatenate([slots, broken])
        lost = lost[self.has_transition[lost]]
        self.has_transition[slots] = False
        self.has_transition[broken] = False
        self.pos[envs] = (self.pos[envs] + 1) % self.slots
        self.size[envs] = np.minimum(self.size[envs] + 1, self.slots)
        return lost

    def add(
        self, obs, actions, rewards, next_obs, terminated, truncated, episode_end=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Store one step of N envs (stacked obs with a leading env dimension); returns (added, lost) slots.

        `terminated` and `truncated` are what the learner bootstraps on (for Atari, a lost life is terminal);
        `episode_end` is where the env really ended an episode (game over, time limit) and so starts a fresh frame
        stack. Stacks follow the env, never the learning signals: after a lost life the game and its stack go on.
        Without `episode_end`, terminated | truncated.
        """
        envs = np.arange(self.num_envs)
        lost = [envs[:0]]
        starting = envs[self.episode_start]
        if len(starting):
            lost.append(self._write(starting, np.asarray(obs)[starting, -1], 0))
        slots = self.base + (self.pos - 1) % self.slots  # each env's newest frame: the newest one of obs
        self.actions[slots] = actions
        self.rewards[slots] = rewards
        self.terminated[slots] = terminated
        self.truncated[slots] = truncated
        self.has_transition[slots] = True
        offsets = np.minimum(self.offset[slots].astype(np.int64) + 1, self.stack - 1)
        lost.append(self._write(envs, np.asarray(next_obs)[:, -1], offsets))
        if episode_end is None:
            episode_end = np.asarray(terminated) | np.asarray(truncated)
        self.episode_start = np.asarray(episode_end, dtype=bool).copy()
        return slots, np.concatenate(lost)

    def cut_episodes(self) -> None:
        """The envs' episodes stop here (a resumed run restarts them): each env's newest transition counts as
        truncated (it bootstraps from its next_obs; n-step returns stop there) and the next add starts new stacks."""
        newest = self.base + (self.pos - 2) % self.slots  # the newest frame (pos - 1) is that transition's next_obs
        newest = newest[(self.size >= 2) & self.has_transition[newest]]
        self.truncated[newest] = True
        self.episode_start[:] = True

    def sample_indices(self, shape: int | tuple, rng: np.random.Generator) -> np.ndarray:
        """Uniform over stored transitions: uniform over written slots, redrawing those without a transition."""
        if not self.has_transition.any():
            raise ValueError("sampling from a replay buffer without transitions")
        ends = np.cumsum(self.size)
        idx = np.empty(shape, dtype=np.int64)
        todo = np.ones(shape, dtype=bool)
        while todo.any():
            u = rng.integers(0, ends[-1], size=int(todo.sum()))
            env = np.searchsorted(ends, u, side="right")
            idx[todo] = self.base[env] + u - (ends[env] - self.size[env])
            todo[todo] = ~self.has_transition[idx[todo]]
        return idx

    def successor(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nxt = self._next(idx)
        return nxt, self.has_transition[nxt]

    def _next(self, idx: np.ndarray) -> np.ndarray:
        return idx - idx % self.slots + (idx % self.slots + 1) % self.slots

    def stacks(self, idx: np.ndarray) -> torch.Tensor:
        """The stacked observations whose newest frame is in slot idx: (*idx.shape, k, H, W) uint8."""
        back = np.arange(self.stack - 1, -1, -1)  # k-1 frames back ... 0
        within = np.minimum(back, self.offset[idx][..., None].astype(np.int64))
        rel = idx % self.slots
        frame_idx = torch.from_numpy(idx[..., None] - rel[..., None] + (rel[..., None] - within) % self.slots)
        frames = self.frames[frame_idx.to(self.device)]
        if self.pad == "zero":
            keep = torch.from_numpy(back <= self.offset[idx][..., None]).to(self.device)
            frames = frames * keep[..., None, None]
        return frames

    def sample(self, shape: int | tuple, rng: np.random.Generator, device: torch.device | str = "cpu") -> Batch:
        return self.gather(self.sample_indices(shape, rng), device)

    def gather(self, idx: np.ndarray, device: torch.device | str = "cpu") -> Batch:
        if self.n_step == 1:
            rewards, last, discount = self.rewards[idx], idx, None
        else:
            rewards, last, discount = nstep_returns(self, idx, self.n_step, self.gamma)
        arrays = [self.actions[idx].astype(np.int64), rewards, self.terminated[last], self.truncated[last]]
        actions, rewards, terminated, truncated = (to_device(torch.from_numpy(a), device) for a in arrays)
        return Batch(
            obs=to_device(self.stacks(idx), device),
            actions=actions,
            rewards=rewards,
            next_obs=to_device(self.stacks(self._next(last)), device),
            terminated=terminated,
            truncated=truncated,
            discount=None if discount is None else to_device(torch.from_numpy(discount), device),
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """The written part of each env's ring plus positions, for a checkpoint."""
        used = int(self.size.max())
        per_env = {name: getattr(self, name).reshape(self.num_envs, self.slots)[:, :used] for name in self.FIELDS}
        frames = self.frames.reshape(self.num_envs, self.slots, *self.frames.shape[1:])[:, :used]
        per_env["frames"] = frames.cpu().numpy()
        per_env["rings"] = np.stack([self.pos, self.size, self.episode_start.astype(np.int64)])
        return per_env

    def stored_slots(self) -> np.ndarray:
        """The slot of each entry `state_dict()` saves, shaped (num_envs, used) like its per-slot fields."""
        return self.base[:, None] + np.arange(int(self.size.max()))

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Restore from `state_dict()`; everything is checked before anything is written. Returns the slot each
        saved entry now occupies, shaped like `stored_slots()`."""
        missing = [name for name in (*self.FIELDS, "frames", "rings") if name not in arrays]
        if missing:
            raise UserError(f"checkpoint replay buffer lacks {', '.join(missing)} (the checkpoint is incomplete)")
        used = arrays["frames"].shape[1] if arrays["frames"].ndim == 4 else -1
        expected = {"frames": ((self.num_envs, used, *self.frames.shape[1:]), np.uint8)}
        expected.update({n: ((self.num_envs, used), getattr(self, n).dtype) for n in self.FIELDS})
        expected["rings"] = ((3, self.num_envs), np.int64)
        for name, (shape, dtype) in expected.items():
            if arrays[name].shape != shape or arrays[name].dtype != dtype or not 0 <= used <= self.slots:
                raise UserError(
                    f"checkpoint replay buffer field {name!r} has shape {arrays[name].shape}/{arrays[name].dtype}, "
                    f"the config expects {shape}/{np.dtype(dtype)} (resume with the run's original config)"
                )
        pos, size, episode_start = arrays["rings"]
        # A ring saved full at fewer slots (a run given a longer budget gets a larger replay) is unrolled oldest
        # first: each frame's predecessor stays the slot before it and the next frames overwrite nothing.
        unroll = (size == used) & (used < self.slots)
        column = np.arange(used)
        saved_column = np.where(unroll[:, None], (pos[:, None] + column) % max(used, 1), column)
        rows = np.arange(self.num_envs)[:, None]
        for name in self.FIELDS:
            getattr(self, name).reshape(self.num_envs, self.slots)[:, :used] = arrays[name][rows, saved_column]
        frames = self.frames.view(self.num_envs, self.slots, *self.frames.shape[1:])
        frames[:, :used] = torch.from_numpy(arrays["frames"][rows, saved_column]).to(self.device)
        self.pos, self.size = np.where(unroll, used, pos), size.copy()
        self.episode_start = episode_start.astype(bool)
        return self.base[:, None] + np.where(unroll[:, None], (column - pos[:, None]) % max(used, 1), column)
