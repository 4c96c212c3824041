"""Data augmentation on whole batches in torch (no torchvision): random crop with padding, translation,
horizontal flips, brightness/contrast jitter.

Random parameters are drawn on the CPU from a generator the caller seeds per epoch, for the full global
batch, so a resumed run and a data-parallel run (which slices the batch afterwards) see the same images as
an uninterrupted single-process run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rl_lab.tasks.configs import AugmentConfig


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def translate(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = _uniform(2 * b, -2 * fraction, 2 * fraction, gen).view(b, 2)  # grid units span 2
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """x: float images in [0, 1], (B, C, H, W)."""
    b = x.shape[0]
    if cfg.crop_padding:
        x = random_crop(x, cfg.crop_padding, gen)
    if cfg.translate:
        x = translate(x, cfg.translate, gen)
    if cfg.hflip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if cfg.contrast:
        factor = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, gen).to(x.device, x.dtype)[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor + mean
    if cfg.brightness:
        x = x + _uniform(b, -cfg.brightness, cfg.brightness, gen).to(x.device, x.dtype)[:, None, None, None]
    if cfg.contrast or cfg.brightness:
        x = x.clamp(0.0, 1.0)
    return x
