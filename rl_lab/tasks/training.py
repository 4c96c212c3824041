"""Pieces every supervised task trains with: EMA weights and batches (optimisers and schedules: rl_lab.optim)."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


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
