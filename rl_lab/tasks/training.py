"""Pieces every supervised task trains with: optimisers, learning-rate schedules, EMA weights, batches.

Schedules step once per epoch. Optimiser param groups come from rl_lab.backbone.transfer, so the encoder's
learning-rate multiplier and freezing work the same for every task.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from rl_lab.config import check


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # L2 on weights (coupled for sgd/adam/rmsprop, decoupled for adamw); never on biases
    eps: float = 1e-8  # adam, adamw, rmsprop
    grad_clip: float | None = None  # max global gradient norm; None = no clipping

    def __post_init__(self):
        check(self.lr > 0, "lr", "must be > 0")
        check(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        check(not self.nesterov or (self.name == "sgd" and self.momentum > 0), "nesterov", "needs sgd with momentum")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.eps > 0, "eps", "must be > 0")
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be > 0 or null")


@dataclass
class ScheduleConfig:
    name: Literal["constant", "step", "cosine", "exponential", "plateau"] = "constant"
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.1  # step, exponential (per epoch) and plateau: the decay factor
    min_lr: float = 0.0  # cosine: the final learning rate
    patience: int = 2  # plateau: epochs without a lower validation loss before decaying

    def __post_init__(self):
        check(self.step_size >= 1, "step_size", "must be >= 1")
        check(0.0 < self.gamma <= 1.0, "gamma", "must be in (0, 1]")
        check(self.min_lr >= 0, "min_lr", "must be >= 0")
        check(self.patience >= 0, "patience", "must be >= 0")


def make_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr, eps=cfg.eps)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int):
    """A torch scheduler stepped once per epoch (plateau: with the validation loss)."""
    sched = torch.optim.lr_scheduler
    if cfg.name == "step":
        return sched.StepLR(optimizer, cfg.step_size, cfg.gamma)
    if cfg.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, epochs, eta_min=cfg.min_lr)
    if cfg.name == "exponential":
        return sched.ExponentialLR(optimizer, cfg.gamma)
    if cfg.name == "plateau":
        return sched.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=cfg.patience)
    return sched.LambdaLR(optimizer, lambda epoch: 1.0)


class EMA:
    """Exponential moving average of a model's weights (Polyak averaging) for evaluation.

    Buffers (BatchNorm statistics) are copied, not averaged: they are already running averages.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - self.decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)


class IndexedBatches(Dataset):
    """Whole batches by a list of indices: one tensor slice per batch instead of B __getitem__ calls + collate."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices]


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    seed: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled (seed given; the same seed gives the same order) or sequential batches of (images, labels).

    Shuffled batches drop the last partial batch, so every step sees batch_size examples (BatchNorm, DDP shards).
    """
    n, drop_last = len(labels), seed is not None and len(labels) > batch_size
    if num_workers == 0 and not pin_memory:  # in-process: slices of one permutation, the order RandomSampler draws
        order = torch.arange(n) if seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        order = order[: n - n % batch_size] if drop_last else order
        return ((images[i], labels[i]) for i in order.split(batch_size))
    data = IndexedBatches(images, labels)
    if seed is None:
        sampler = BatchSampler(SequentialSampler(data), batch_size, drop_last=False)
    else:
        shuffled = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
        sampler = BatchSampler(shuffled, batch_size, drop_last)
    return DataLoader(data, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
