"""The glimpse task of the recurrent attention model as a gymnasium env, for any agent (REINFORCE, A2C, ...).

An episode is one image of a dataset from rl_lab.data. The agent never sees the image, only glimpses of it through
the same sensor RAM uses (rl_lab/glimpse.py). reset() shows the glimpse at the image centre; each step moves the
sensor, until the glimpse budget is spent and the agent must name the class: reward 1 if right, else 0.

Observation: one float32 vector [glimpse patches (scales * C * g * g, in [0, 1]), location (x, y), fraction of the
glimpse budget left], so feed-forward and recurrent policies on flat vectors both apply.

Actions (`actions=`):
  discrete    Discrete(grid**2 + classes): a < grid**2 looks at the centre of grid cell a (row-major); any other
              action answers class a - grid**2 and ends the episode. Answering early is allowed; a look after the
              last glimpse ends the episode unanswered (reward 0).
  continuous  Box(-1, 1, (2 + classes,)): the first two numbers are the next location; once the budget is spent
              the step answers argmax of the remaining numbers. Every episode is exactly `glimpses` steps long.

RAM itself trains on the batched torch version of this task (agents/ram.py) for speed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import gymnasium as gym
import numpy as np
import torch

from rl_lab.data import load_dataset
from rl_lab.errors import UserError
from rl_lab.ram.sensor import glimpse


@lru_cache(maxsize=4)
def _images(dataset: str, split: str, seed: int, options: tuple) -> tuple[torch.Tensor, np.ndarray, int]:
    """One copy per process for all envs of a vector env: images as float in [0, 1], labels, class count."""
    data = load_dataset(dataset, split, seed, **dict(options))
    return data.images.float() / 255, data.labels.numpy(), data.num_classes


class GlimpseEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(
        self,
        dataset: str = "mnist",
        split: str = "train",
        data_seed: int = 0,
        data_kwargs: dict | None = None,
        glimpses: int = 6,
        glimpse_size: int = 8,
        scales: int = 1,
        scale: int = 2,
        actions: Literal["discrete", "continuous"] = "discrete",
        grid: int = 5,
    ):
        for name, value in {
            "glimpses": glimpses,
            "glimpse_size": glimpse_size,
            "scales": scales,
            "scale": scale,
        }.items():
            if not (isinstance(value, int) and value >= 1):
                raise UserError(f"Glimpse env: {name}={value!r} must be an integer >= 1")
        if actions not in ("discrete", "continuous"):
            raise UserError(f"Glimpse env: actions={actions!r} must be 'discrete' or 'continuous'")
        if not (isinstance(grid, int) and grid >= 1):
            raise UserError(f"Glimpse env: grid={grid!r} must be an integer >= 1")
        self.images, self.labels, self.num_classes = _images(
            dataset, split, data_seed, tuple(sorted((data_kwargs or {}).items()))
        )
        self.sensor = (glimpse_size, scales, scale)
        self.glimpses, self.actions, self.grid = glimpses, actions, grid
        pixels = scales * self.images.shape[1] * glimpse_size**2
        low = np.concatenate([np.zeros(pixels), [-1.0, -1.0, 0.0]]).astype(np.float32)
        high = np.ones(pixels + 3, dtype=np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        if actions == "discrete":
            self.action_space = gym.spaces.Discrete(grid * grid + self.num_classes)
        else:
            self.action_space = gym.spaces.Box(-1.0, 1.0, (2 + self.num_classes,), dtype=np.float32)
        self.index, self.seen = 0, 0
        self.location = np.zeros(2, dtype=np.float32)

    def _observe(self) -> np.ndarray:
        image = self.images[self.index : self.index + 1]
        patches = glimpse(image, torch.from_numpy(self.location)[None], *self.sensor)
        left = (self.glimpses - self.seen) / self.glimpses
        return np.concatenate([patches.flatten().numpy(), self.location, [left]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.index = int(self.np_random.integers(len(self.labels)))
        self.location = np.zeros(2, dtype=np.float32)
        self.seen = 1
        return self._observe(), {"label": int(self.labels[self.index])}

    def step(self, action):
        label = int(self.labels[self.index])
        if self.actions == "discrete":
            action = int(action)
            cells = self.grid * self.grid
            if action >= cells:  # an answer
                return self._answer(action - cells == label, label)
            if self.seen >= self.glimpses:  # looked again with no glimpse left: unanswered
                return self._answer(False, label)
            row, col = divmod(action, self.grid)
            location = (np.array([col, row]) + 0.5) / self.grid * 2 - 1
        else:
            action = np.asarray(action, dtype=np.float32)
            if self.seen >= self.glimpses:
                return self._answer(int(np.argmax(action[2:])) == label, label)
            location = action[:2]
        self.location = np.clip(location, -1, 1).astype(np.float32)
        self.seen += 1
        return self._observe(), 0.0, False, False, {"label": label}

    def _answer(self, correct: bool, label: int):
        self.seen = self.glimpses
        return self._observe(), float(correct), True, False, {"label": label, "correct": bool(correct)}
