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

render_mode="rgb_array" draws the image with the glimpse's squares (one per scale) and the places looked at so far
(`rl-lab eval RUN_DIR --video N` films them); the frame after the answer is framed green (right) or red (wrong).

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
from rl_lab.ram.sensor import glimpse, patch_sides, pixel_centres

FRAME = 240  # rendered frames are about this many pixels wide: each image pixel a square of pixels


@lru_cache(maxsize=4)
def _images(dataset: str, split: str, seed: int, options: tuple) -> tuple[torch.Tensor, np.ndarray, int]:
    """One copy per process for all envs of a vector env: images as float in [0, 1], labels, class count."""
    data = load_dataset(dataset, split, seed, **dict(options))
    return data.images.float() / 255, data.labels.numpy(), data.num_classes


class GlimpseEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

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
        render_mode: str | None = None,
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
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"Glimpse env: render_mode={render_mode!r}: only rgb_array")
        self.render_mode = render_mode
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
        self.path: list[np.ndarray] = []  # the locations looked at in this episode (render)
        self.outcome: bool | None = None  # the answer's correctness once given (render)

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
        self.path, self.outcome = [self.location], None
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
        self.path.append(self.location)
        self.seen += 1
        return self._observe(), 0.0, False, False, {"label": label}

    def _answer(self, correct: bool, label: int):
        self.seen = self.glimpses
        self.outcome = bool(correct)
        return self._observe(), float(correct), True, False, {"label": label, "correct": bool(correct)}

    def render(self) -> np.ndarray | None:
        """The image (grey), the places looked at so far (cyan dots), the current glimpse's squares (yellow, one per
        scale) and, after the answer, a green (right) or red (wrong) frame: (H * z, W * z, 3) uint8."""
        if self.render_mode != "rgb_array":
            return None
        image = self.images[self.index].mean(0).numpy()
        height, width = image.shape
        zoom = max(1, -(-FRAME // width))
        frame = np.repeat(np.repeat((image * 255).astype(np.uint8), zoom, 0), zoom, 1)
        frame = np.repeat(frame[..., None], 3, axis=2)
        rows, cols = pixel_centres(torch.from_numpy(np.stack(self.path)), height, width)
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            _box(frame, row * zoom + zoom // 2, col * zoom + zoom // 2, max(2, zoom), (0, 255, 255), fill=True)
        size, scales, scale = self.sensor
        for side in patch_sides(size, scales, scale):  # patch side P covers pixels centre - P//2 .. + P - 1
            top, left = (rows[-1].item() - side // 2) * zoom, (cols[-1].item() - side // 2) * zoom
            _box(frame, top + side * zoom // 2, left + side * zoom // 2, side * zoom, (255, 220, 0))
        if self.outcome is not None:
            _box(
                frame,
                frame.shape[0] // 2,
                frame.shape[1] // 2,
                frame.shape[0],
                (0, 200, 0) if self.outcome else (220, 0, 0),
            )
        return frame


def _box(frame: np.ndarray, row: int, col: int, side: int, colour, fill: bool = False, width: int = 2) -> None:
    """A square of `side` pixels centred at (row, col), its outline `width` pixels thick (or filled), clipped."""
    top, left = row - side // 2, col - side // 2
    bottom, right = top + side, left + side
    height, wide = frame.shape[:2]

    def paint(r0, r1, c0, c1):
        r0, r1, c0, c1 = max(r0, 0), min(r1, height), max(c0, 0), min(c1, wide)
        if r0 < r1 and c0 < c1:
            frame[r0:r1, c0:c1] = colour

    if fill:
        paint(top, bottom, left, right)
        return
    paint(top, top + width, left, right)
    paint(bottom - width, bottom, left, right)
    paint(top, bottom, left, left + width)
    paint(top, bottom, right - width, right)
