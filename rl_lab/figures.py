"""The lab's figures, and the one way it gets matplotlib and writes a figure.

`pyplot()` imports matplotlib.pyplot on first use (importing this module does not import matplotlib); it selects
the Agg backend only when the lab draws headless: nobody chose a backend (no MPLBACKEND, matplotlibrc entry,
matplotlib.use or earlier pyplot import, so a notebook keeps its own) and there is no display. `save_figure`
lays out, writes (making the directory) and closes a figure; every figure of the lab goes through it.

    plot_learning_curve    an agent run's training and evaluation returns (plots/learning_curve.png)
    plot_grid_values       grid-world values and policies side by side (rl-lab solve)
    plot_confusion_matrix  a classification run's test confusion matrix (confusion_matrix counts it)
    plot_epochs            a classification run's accuracy and loss per epoch
    plot_loss_and_scores   a task's training loss per step and validation scores per epoch (captioning)
    plot_curve_bands       mean learning curves over seeds with bootstrap bands, one colour per entry (rl-lab compare)
    plot_performance_profile  fraction of runs above each score, with bands (rl-lab compare)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot, on the Agg backend when the lab draws headless and nobody chose a backend."""
    if "matplotlib.pyplot" not in sys.modules and _headless():
        import matplotlib

        if matplotlib.rcParams._get_backend_or_none() is None:  # None: no MPLBACKEND, rc file entry or use()
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _headless() -> bool:
    """No display to open a window on (Linux and the BSDs without X11 or Wayland; macOS and Windows have one)."""
    if sys.platform in ("darwin", "win32", "cygwin"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def save_figure(fig, out_path: str | Path, **savefig_kwargs) -> Path:
    """Lay out (tightly, unless the figure has its own layout engine), write (making the directory) and close a
    figure; savefig_kwargs go to fig.savefig."""
    out_path = Path(out_path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, **savefig_kwargs)
    pyplot().close(fig)
    return out_path


def plot_learning_curve(metrics_path: Path, out_path: Path, title: str) -> Path:
    """Training episode return (recent mean) and evaluation return (mean +/- std) against environment steps."""
    plt = pyplot()
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["train/episode_return"]) for r in rows if "train/episode_return" in r]
    evals = [(r["step"], *return_band(r)) for r in rows if "eval/return_mean" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        steps, values = zip(*train, strict=True)
        ax.plot(steps, values, label="train episode return (recent mean)", color="tab:blue", alpha=0.8)
    if evals:
        steps, means, low, high = zip(*evals, strict=True)
        ax.plot(steps, means, "o-", label="eval return (mean ± std, within min / max)", color="tab:orange")
        ax.fill_between(steps, low, high, color="tab:orange", alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_figure(fig, out_path)


def return_band(row: dict) -> tuple[float, float, float]:
    """An evaluation's mean and its mean ± std band, clipped to the returns it saw (eval/return_min / _max when
    logged): a band never claims returns the episodes could not have (above a cap, below the worst score)."""
    mean, std = row["eval/return_mean"], row.get("eval/return_std") or 0.0
    low, high = mean - std, mean + std
    if row.get("eval/return_min") is not None:
        low = max(low, row["eval/return_min"])
    if row.get("eval/return_max") is not None:
        high = min(high, row["eval/return_max"])
    return mean, low, high


def text_colours(rgba: np.ndarray) -> list[str]:
    """Black or white, whichever reads on each background colour (N, 3 or 4) in [0, 1]: by relative luminance."""
    rgb = np.asarray(rgba, dtype=float)[:, :3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)  # sRGB -> linear light
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    # the contrast ratio with black, (L + 0.05) / 0.05, beats white's, 1.05 / (L + 0.05), above L = 0.179
    return ["black" if value > 0.179 else "white" for value in luminance]


def plot_grid_values(grid, panels: list[tuple[str, object, object]], out_path: Path, title: str) -> Path:
    """Grid-world panels side by side, each (name, V[s], policy[s, a]): V as a heatmap with its numbers, the
    policy as arrows (every action with probability > 0); walls black, terminal cells grey, as in the lecture."""
    from rl_lab.envs.gridworld import MOVES

    plt = pyplot()
    height, width = grid.shape
    cells, live = grid.cells, ~grid.terminal
    size = (max(3.0, 0.6 * width + 1.2), max(2.5, 0.6 * height + 0.8))
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]), dpi=120, squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.1")  # walls
    fontsize = max(4, 9 - max(height, width) // 3)
    for ax, (name, values, policy) in zip(axes[0], panels, strict=True):
        values, policy = np.asarray(values, dtype=float), np.asarray(policy, dtype=float)
        image = np.full((height, width), np.nan)
        image[cells[live, 0], cells[live, 1]] = values[live]
        shown = ax.imshow(image, cmap=cmap)
        for i, j in cells[~live]:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.65"))
            ax.text(j, i, "T", ha="center", va="center", fontsize=fontsize + 2)
        ink = np.full(len(values), "white", dtype=object)  # per state: black on light cells, white on dark ones
        ink[live] = text_colours(shown.cmap(shown.norm(values[live])))
        for (i, j), v, colour in zip(cells[live], values[live], ink[live], strict=True):
            ax.text(j, i - 0.3, f"{v:.1f}", ha="center", va="center", fontsize=fontsize, color=colour)
        states, actions = np.nonzero((policy > 0) & live[:, None])
        dy, dx = MOVES[actions].T
        ax.quiver(  # each arrow starts a little off the centre so that several stay apart
            cells[states, 1] + 0.1 * dx,
            cells[states, 0] + 0.1 + 0.1 * dy,
            0.25 * dx,
            0.25 * dy,
            angles="xy",
            scale_units="xy",
            scale=1,
            color=list(ink[states]),
            width=0.012,
        )
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_path)


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def plot_confusion_matrix(counts: np.ndarray, class_names: list[str], out_path: Path, title: str) -> Path:
    """counts[true, predicted] as a heatmap, each non-zero cell with its count."""
    n = len(class_names)
    fig, ax = pyplot().subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n), dpi=120)
    ax.imshow(counts, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                color = "white" if counts[i, j] > counts.max() / 2 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, out_path)


def plot_epochs(metrics_path: Path, out_path: Path, title: str) -> Path:
    """Train and validation accuracy and loss against epochs, from the per-epoch lines of metrics.jsonl."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "val/acc" in r]
    fig, (acc_ax, loss_ax) = pyplot().subplots(1, 2, figsize=(9, 3.5), dpi=120)
    epochs = [r["epoch"] for r in rows]
    for split, key in (("train", "train/epoch_"), ("val", "val/")):
        acc_ax.plot(epochs, [r[f"{key}acc"] for r in rows], "o-", label=split, markersize=3)
        loss_ax.plot(epochs, [r[f"{key}loss"] for r in rows], "o-", label=split, markersize=3)
    acc_ax.set_ylabel("accuracy")
    loss_ax.set_ylabel("cross-entropy")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_path)


def plot_loss_and_scores(metrics_path: Path, out_path: Path, title: str, scores: tuple[str, ...]) -> Path:
    """A task's training loss against optimiser steps and its validation `scores` (metrics.jsonl keys, e.g.
    val/cider) against epochs: the learning curve of a task without an accuracy (captioning)."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, (loss_ax, score_ax) = pyplot().subplots(1, 2, figsize=(9, 3.5), dpi=120)
    losses = [(r["step"], r["train/loss"]) for r in rows if r.get("train/loss") is not None]
    if losses:
        loss_ax.plot(*zip(*losses, strict=True), "-" if len(losses) > 20 else "o-", markersize=3, label="train")
    loss_ax.set(xlabel="optimiser step", ylabel="training loss")
    epochs = [r for r in rows if "epoch" in r and any(r.get(key) is not None for key in scores)]
    for key in scores:
        points = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
        if points:
            score_ax.plot(*zip(*points, strict=True), "o-", markersize=3, label=key)
    score_ax.set(xlabel="epoch", ylabel="validation score")
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_path)


def plot_curve_bands(panels: dict[str, list], out_path: Path, xlabel: str, ylabel: str) -> Path:
    """One panel per task: each entry's mean curve over runs and its 95 % band, entries (label, colour index, steps,
    mean, low, high) coloured by their index in every panel."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), dpi=120, squeeze=False)
    for ax, (task, curves) in zip(axes[0], panels.items(), strict=True):
        for label, index, steps, mean, low, high in curves:
            ax.plot(steps, mean, color=f"C{index % 10}", label=label)
            ax.fill_between(steps, low, high, color=f"C{index % 10}", alpha=0.2)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("mean over seeds, 95 % bootstrap band", fontsize=9)
    return save_figure(fig, out_path)


def plot_performance_profile(profiles: list, out_path: Path, score: str) -> Path:
    """Fraction of runs with a final score above tau against tau, with 95 % bands; profiles (label, colour index,
    taus, fraction, low, high)."""
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=120)
    for label, index, taus, fraction, low, high in profiles:
        ax.plot(taus, fraction, color=f"C{index % 10}", label=label)
        ax.fill_between(taus, low, high, color=f"C{index % 10}", alpha=0.2)
    ax.set_xlabel(f"{score} (tau)")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("performance profile, 95 % stratified bootstrap band", fontsize=9)
    return save_figure(fig, out_path)
