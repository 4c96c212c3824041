"""Data-parallel training under torchrun (DDP): one process per device (or CPU), gloo on CPU, nccl on CUDA.

    torchrun --nproc_per_node 2 -m rl_lab.cli train configs/mnist_cnn.yaml run.dir=runs/ddp

Every process builds the same global batch (same shuffling and augmentation numbers) and trains on its shard
`batch[rank::world]`; DDP averages the gradients, which equals the gradient of the whole batch, so a run
matches single-process training up to float noise. Only rank 0 writes files.

PPO (rl_lab.rl.onpolicy, agents/ppo.py) runs the same way with envs instead of data: each process steps envs of its
own and draws its actions from the noise of the global batch (own_rows), gradients are averaged over processes
(average_gradients), and minibatch statistics are gathered (gather), so N processes act and learn as one process
with N times the envs.
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


def launched() -> bool:
    """Whether torchrun started this process as one of several (before or after the process group exists)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> str:
    """Join the process group when launched by torchrun; returns the device this process should use."""
    if not launched() or dist.is_initialized():
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


def average_gradients(parameters) -> None:
    """Each gradient replaced by its mean over processes, in one all-reduce (nothing in a single process). When
    every process's loss is the mean over an equal share of a batch, that is the gradient of the whole batch's mean
    loss, and every replica then takes the same optimiser step."""
    if rank_and_world()[1] == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= rank_and_world()[1]
    for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(part.view_as(grad))


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) copied to every process, as DDP does."""
    if rank_and_world()[1] == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def gather(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every process's `x` (equal shapes) concatenated along `dim` in rank order (the input itself in a single
    process); not differentiable."""
    world = rank_and_world()[1]
    if world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim)


def gather_objects(obj) -> list:
    """Every process's picklable `obj`, in rank order, on every process ([obj] in a single process)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    parts = [None] * world
    dist.all_gather_object(parts, obj)
    return parts


def own_rows(draw, x: torch.Tensor, fill: float = 0.0, shard: tuple[int, int] | None = None) -> torch.Tensor:
    """`draw` (a random function of a tensor, row by row) as one process holding every process's rows would call
    it, this process's rows of its result: `x` (rows, ...) is put at this rank's rows of a (world * rows, ...)
    tensor of `fill`, `draw` runs on the whole, and this rank's rows come back. With torch's RNG seeded alike
    everywhere, every process draws the same numbers and each keeps its share, so N processes with n rows each
    draw exactly what one process with N * n rows would. In a single process: draw(x). `shard`: (rank, world)
    instead of this process's."""
    rank, world = shard or rank_and_world()
    if world == 1:
        return draw(x)
    rows = x.shape[0]
    whole = x.new_full((world * rows, *x.shape[1:]), fill)
    whole[rank * rows : (rank + 1) * rows] = x
    return draw(whole)[rank * rows : (rank + 1) * rows]


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
