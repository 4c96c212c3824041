"""Where RAM looks: glimpse paths drawn over images, as a PNG grid and an animated GIF (the task sends both to W&B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rl_lab.figures import pyplot, save_figure
from rl_lab.ram.sensor import pixel_centres


def _draw(ax, image: np.ndarray, path: np.ndarray, sides: list[int], upto: int, title: str) -> None:
    """image (H, W) in [0, 1]; path (T, 2) of integer (row, col) centres; glimpses 0..upto-1 drawn."""
    plt = pyplot()
    colours = plt.get_cmap("autumn")
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    steps = len(path)
    ax.plot(path[:upto, 1], path[:upto, 0], "-", color="cyan", linewidth=1, alpha=0.7)
    for t in range(upto):
        colour = colours(t / max(steps - 1, 1))
        row, col = path[t]
        for i, side in enumerate(sides if t == upto - 1 else sides[:1]):  # every scale of the newest glimpse
            corner = (col - side // 2 - 0.5, row - side // 2 - 0.5)
            ax.add_patch(plt.Rectangle(corner, side, side, fill=False, color=colour, linewidth=1.5 - 0.3 * i))
        ax.text(col, row, str(t + 1), color=colour, fontsize=7, ha="center", va="center", weight="bold")
    ax.set_title(title, fontsize=8)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.axis("off")


def _figure(images, paths, titles, sides, upto):
    n = len(images)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), dpi=90, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n:
            _draw(ax, images[k], paths[k], sides, upto, titles[k])
        else:
            ax.axis("off")
    return fig


def glimpse_figures(
    images: torch.Tensor,
    labels: torch.Tensor,
    locations: torch.Tensor,
    predictions: torch.Tensor,
    sides: list[int],
    out_dir: Path,
) -> tuple[Path, Path]:
    """Write out_dir/glimpses.png (whole paths) and out_dir/glimpses.gif (one frame per glimpse).

    images (N, C, H, W) in [0, 1]; locations (T, N, 2) as RAM returns them; predictions (N,).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    height, width = images.shape[2:]
    steps = locations.shape[0]
    centres = [torch.stack(pixel_centres(loc, height, width), -1) for loc in locations.cpu()]
    paths = torch.stack(centres, 1).numpy()  # (N, T, 2)
    pictures = images.mean(1).cpu().numpy()  # grey, whatever the channels
    titles = [f"label {y}, predicted {p}" for y, p in zip(labels.tolist(), predictions.tolist(), strict=True)]
    png, gif = out_dir / "glimpses.png", out_dir / "glimpses.gif"
    save_figure(_figure(pictures, paths, titles, sides, steps), png)
    frames = []
    for upto in range(1, steps + 1):
        fig = _figure(pictures, paths, titles, sides, upto)
        fig.tight_layout()
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
        pyplot().close(fig)
    first, *rest = [Image.fromarray(frame) for frame in frames]
    first.save(gif, save_all=True, append_images=rest, duration=600, loop=0)  # 0.6 s a glimpse
    return png, gif
