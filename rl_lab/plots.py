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
