"""The glimpse sensor of the recurrent attention model (Mnih et al. 2014), batched, shared by RAM and the env.

A glimpse at location l in [-1, 1]^2 (x right, y down, (0, 0) the image centre, (-1, -1) the top-left corner)
is k square patches centred there: the first g x g pixels, each next one `scale` times wider, every patch
average-pooled back to g x g. Pixels outside the image read as zero.

All k patches share one integer centre, so the k patches are central crops of the widest one: one indexed
read of the widest patch per image (from an unfolded view of the padded batch), then a slice and an average
pool per scale. The location is rounded to a pixel,
so the sensor is not differentiable in l — RAM never needs that (the sampled location is detached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_sides(size: int, scales: int, scale: int) -> list[int]:
    return [size * scale**i for i in range(scales)]


def pixel_centres(loc: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer (row, col) of the pixel whose top-left corner is nearest below l; l = 1 maps to the last pixel.

    Computed in float64, so a location on a pixel boundary rounds the same way on every device and dtype."""
    loc = loc.double()
    col = torch.floor((loc[:, 0].clamp(-1, 1) + 1) / 2 * width).long().clamp(max=width - 1)
    row = torch.floor((loc[:, 1].clamp(-1, 1) + 1) / 2 * height).long().clamp(max=height - 1)
    return row, col


def pad_for_glimpses(images: torch.Tensor, size: int, scales: int = 1, scale: int = 2) -> torch.Tensor:
    """Zero-pad a batch (B, C, H, W) so that the widest patch at every in-range location lies inside it.

    RAM pads once per batch and reads all its glimpses from the result (`read_glimpses`)."""
    widest = size * scale ** (scales - 1)
    return F.pad(images, (widest // 2, widest, widest // 2, widest))


def read_glimpses(padded: torch.Tensor, loc: torch.Tensor, size: int, scales: int = 1, scale: int = 2) -> torch.Tensor:
    """Glimpses from a batch padded by `pad_for_glimpses`: loc (B, 2) -> (B, scales, C, size, size).

    Patch i of side P = size * scale**i covers rows r - P//2 .. r - P//2 + P - 1 (cols alike) around the
    pixel centre (r, c) from `pixel_centres`; in padded coordinates the widest patch starts at (r, c).
    """
    widest = size * scale ** (scales - 1)
    half = widest // 2
    height, width = padded.shape[-2] - half - widest, padded.shape[-1] - half - widest
    row, col = pixel_centres(loc, height, width)
    windows = padded.unfold(2, widest, 1).unfold(3, widest, 1)  # a view: (B, C, rows, cols, widest, widest)
    patch = windows[torch.arange(padded.shape[0], device=padded.device), :, row, col]  # (B, C, widest, widest)
    out = []
    for side in patch_sides(size, scales, scale):
        start = half - side // 2
        crop = patch[:, :, start : start + side, start : start + side]
        out.append(F.avg_pool2d(crop, side // size) if side > size else crop)
    return torch.stack(out, dim=1)


def glimpse(images: torch.Tensor, loc: torch.Tensor, size: int, scales: int = 1, scale: int = 2) -> torch.Tensor:
    """Glimpses of a batch: images (B, C, H, W) float, loc (B, 2) -> (B, scales, C, size, size)."""
    return read_glimpses(pad_for_glimpses(images, size, scales, scale), loc, size, scales, scale)
