"""Pick the compute device (cuda, then mps, then cpu, unless the config names one) and the CPU thread count."""

from __future__ import annotations

import os

import torch

from rl_lab.errors import UserError


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is available; use device=auto or device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name} but MPS is not available; use device=auto or device=cpu")
    return device


def free_cores() -> int:
    """Cores not busy right now: the cores this process may use minus the 1-minute load average (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - busy)))


def choose_threads(requested: int, small_model: bool) -> tuple[int, str]:
    """(torch threads, why). `requested` > 0 is the user's choice. Otherwise a small model (an MLP acting on one
    observation at a time, a table) gains nothing from more threads and loses 10-15x when they compete with other
    work; a large one (CNNs, big batches) gets the cores that are free now, so it stays fast on a busy machine."""
    if requested > 0:
        return requested, "set by torch_threads"
    if small_model:
        return 1, "auto: a small network gains nothing from more threads"
    free = free_cores()
    return free, f"auto: {free} of {os.cpu_count()} cores free"
