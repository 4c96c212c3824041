"""Data-parallel training under torchrun (DDP): one process per device (or CPU), gloo on CPU, nccl on CUDA.

    torchrun --nproc_per_node 2 -m rl_lab.cli train configs/mnist_cnn.yaml run.dir=runs/ddp

Every process builds the same global batch (same shuffling and augmentation numbers) and trains on its shard
`batch[rank::world]`; DDP averages the gradients, which equals the gradient of the whole batch, so a run
matches single-process training up to float noise. Only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, or a plain single process; readable before the process group exists (torchrun sets RANK)."""
    return rank_and_world()[0] == 0 and os.environ.get("RANK", "0") == "0"


def setup(device_name: str) -> str:
    """Join the process group when launched by torchrun; returns the device this process should use."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device_name
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return "cpu"


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if rank_and_world()[1] == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return batch if world == 1 else batch[rank::world]


def total(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a copy; the input itself in a single process)."""
    if rank_and_world()[1] == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def mean(x: torch.Tensor) -> torch.Tensor:
    return total(x) / rank_and_world()[1]


@torch.no_grad()
def replica_divergence(model: nn.Module) -> float:
    """Largest absolute difference between any weight here and the same weight on rank 0 (0.0 = in sync)."""
    if rank_and_world()[1] == 1:
        return 0.0
    flat = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return diff.item()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class NullLogger:
    """What processes other than rank 0 log to: nothing (rank 0 writes metrics.jsonl and W&B)."""

    lines = 0

    def log(self, step: int, metrics: dict, extra: dict | None = None) -> None:
        pass

    def progress(self, step: int, **fields) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def log_media(self, step: int, files: dict) -> None:
        pass

    def close(self) -> None:
        pass
