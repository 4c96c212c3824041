"""Figures written into a run's plots/ directory."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curve(metrics_path: Path, out_path: Path, title: str) -> Path:
    """Training episode return (recent mean) and evaluation return (mean +/- std) against environment steps."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["train/episode_return"]) for r in rows if "train/episode_return" in r]
    evals = [(r["step"], r["eval/return_mean"], r["eval/return_std"]) for r in rows if "eval/return_mean" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        steps, values = zip(*train, strict=True)
        ax.plot(steps, values, label="train episode return (recent mean)", color="tab:blue", alpha=0.8)
    if evals:
        steps, means, stds = zip(*evals, strict=True)
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        ax.plot(steps, means, "o-", label="eval return (mean ± std)", color="tab:orange")
        ax.fill_between(steps, low, high, color="tab:orange", alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def save_figure(fig, out_path: Path) -> Path:
    """Lay out, write (making the directory) and close a figure."""
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def plot_grid_values(grid, panels: list[tuple[str, object, object]], out_path: Path, title: str) -> Path:
    """Grid-world panels side by side, each (name, V[s], policy[s, a]): V as a heatmap with its numbers, the
    policy as arrows (every action with probability > 0); walls black, terminal cells grey, as in the lecture."""
    import numpy as np

    from envs.gridworld import MOVES

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
        for (i, j), v in zip(cells[live], values[live], strict=True):
            ax.text(j, i - 0.3, f"{v:.1f}", ha="center", va="center", fontsize=fontsize, color="white")
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
            color="white",
            width=0.012,
        )
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_path)
