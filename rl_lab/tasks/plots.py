"""Figures of a supervised run: the confusion matrix of the test set and accuracy/loss per epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rl_lab.plots import plt  # the lab's matplotlib, already on the Agg backend


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def plot_confusion_matrix(counts: np.ndarray, class_names: list[str], out_path: Path, title: str) -> Path:
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n), dpi=120)
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
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def plot_epochs(metrics_path: Path, out_path: Path, title: str) -> Path:
    """Train and validation accuracy and loss against epochs, from the per-epoch lines of metrics.jsonl."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "val/acc" in r]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=120)
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
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
