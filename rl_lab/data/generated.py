"""Translated and cluttered MNIST (Mnih et al. 2014): a 28x28 digit at a random place on a larger canvas,
optionally among 8x8 pieces of other digits. Vectorised numpy; a few thousand canvases take milliseconds.

Each split is drawn only from the same split of the source MNIST (the digit and its clutter alike), so train,
val and test never share a source digit. The canvases are a function of (seed, split) alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rl_lab.data.common import SPLITS, Dataset, make_dataset
from rl_lab.data.mnist import load_mnist, load_mnist_full
from rl_lab.errors import UserError

DIGIT = 28
PIECE = 8
INK = (4, DIGIT - 4 - PIECE)  # MNIST ink lies in the central 20x20, so pieces come from there, not blank margins
SOURCES = {"mnist": load_mnist, "mnist_full": load_mnist_full}


def paste_max(canvas: np.ndarray, pieces: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """Paste pieces[i] (N, h, w) onto canvas[i] at column x[i], row y[i], keeping the brighter pixel."""
    n, h, w = pieces.shape
    rows = y[:, None, None] + np.arange(h)[None, :, None]
    cols = x[:, None, None] + np.arange(w)[None, None, :]
    i = np.arange(n)[:, None, None]
    canvas[i, rows, cols] = np.maximum(canvas[i, rows, cols], pieces)


def make_canvases(
    digits: np.ndarray, num: int, canvas_size: int, clutter: int, rng: np.random.Generator, positions: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canvases (num, S, S), which source digit each shows, and its box (x0, y0, x1, y1); digits (M, 28, 28).

    Canvas i shows digit i mod M, so every source digit appears before any appears twice. The digit's top-left
    corner is anywhere (positions 0), or one of a positions x positions lattice spanning the canvas (2: a corner).
    """
    which = np.arange(num) % len(digits)
    canvas = np.zeros((num, canvas_size, canvas_size), np.uint8)
    for _ in range(clutter):
        other = (which + rng.integers(1, len(digits), num)) % len(digits)  # any digit but the canvas's own
        oy, ox = rng.integers(INK[0], INK[1] + 1, (2, num))
        crops = digits[
            other[:, None, None],
            oy[:, None, None] + np.arange(PIECE)[None, :, None],
            ox[:, None, None] + np.arange(PIECE)[None, None, :],
        ]
        px, py = rng.integers(0, canvas_size - PIECE + 1, (2, num))
        paste_max(canvas, crops, px, py)
    if positions:
        x, y = rng.integers(0, positions, (2, num)) * (canvas_size - DIGIT) // (positions - 1)
    else:
        x, y = rng.integers(0, canvas_size - DIGIT + 1, (2, num))
    paste_max(canvas, digits[which], x, y)
    return canvas, which, np.stack([x, y, x + DIGIT, y + DIGIT], axis=1)


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name}={value!r} must be an integer from {low} to {high}")


def load_generated(
    name: str,
    split: str,
    val_fraction: float,
    cache_dir: Path,
    seed: int,
    canvas_size: int,
    clutter: int,
    num_samples: int | None,
    source: str,
    positions: int = 0,
) -> Dataset:
    _check_int("canvas_size", canvas_size, DIGIT, 512)
    _check_int("clutter", clutter, 0, 64)
    if positions != 0:
        _check_int("positions", positions, 2, canvas_size - DIGIT + 1)
    if num_samples is not None:
        _check_int("num_samples", num_samples, 1, 1_000_000)
    if source not in SOURCES:
        raise UserError(f"source={source!r} must be one of {', '.join(SOURCES)}")
    base = SOURCES[source](split, val_fraction, cache_dir)
    if clutter and len(base) < 2:
        raise UserError(f"{source} {split} split has {len(base)} digits; clutter needs at least 2")
    rng = np.random.default_rng([seed, SPLITS.index(split), canvas_size, clutter])  # unrelated streams
    digits = base.images[:, 0].numpy()
    images, which, boxes = make_canvases(digits, num_samples or len(base), canvas_size, clutter, rng, positions)
    return make_dataset(
        name,
        split,
        images[:, None],
        base.labels.numpy()[which],
        base.source_index.numpy()[which],
        num_classes=base.num_classes,
        class_names=base.class_names,
        source=f"{base.source}, {canvas_size}x{canvas_size} canvas, {clutter} clutter pieces, seed {seed}"
        + (f", {positions}x{positions} positions" if positions else ""),
        boxes=boxes,
    )


def load_translated(
    split: str,
    val_fraction: float,
    cache_dir: Path,
    seed: int,
    canvas_size: int = 60,
    num_samples: int | None = None,
    source: str = "mnist",
    positions: int = 0,
) -> Dataset:
    return load_generated(
        "translated_mnist", split, val_fraction, cache_dir, seed, canvas_size, 0, num_samples, source, positions
    )


def load_cluttered(
    split: str,
    val_fraction: float,
    cache_dir: Path,
    seed: int,
    canvas_size: int = 60,
    clutter: int = 4,
    num_samples: int | None = None,
    source: str = "mnist",
) -> Dataset:
    return load_generated(
        "cluttered_mnist", split, val_fraction, cache_dir, seed, canvas_size, clutter, num_samples, source
    )
