"""Pick the compute device (cuda, then mps, then cpu, unless the config names one) and the CPU thread count."""

from __future__ import annotations

import os
import time

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


def busy_cores(window: float = 0.25) -> float | None:
    """Cores' worth of CPU time the machine spent busy over the next `window` seconds (Linux /proc/stat), None where
    that cannot be read. Measured now, unlike the 1-minute load average, which lags a job that just ended (it made
    an idle machine look busy and the next run take 1 thread) or one that just started."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]  # total (user .. steal) and idle + iowait jiffies

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def free_cores() -> int:
    """Cores not busy right now (at least 1): the cores this process may use minus those busy over a quarter of a
    second, or minus the 1-minute load average where /proc/stat is missing (macOS)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = busy_cores()
    if busy is None:
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
