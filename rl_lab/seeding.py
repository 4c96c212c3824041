"""Seeding and RNG state capture, so a resumed run draws exactly the numbers an uninterrupted one would."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return the generator the training loop draws from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """torch's global RNG seeded with `seed` inside the block and restored after it: an evaluation that samples
    actions draws the same ones every time, and leaves the training run's random stream as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def rng_state(rng: np.random.Generator) -> tuple[dict, dict[str, torch.Tensor]]:
    """JSON-able states (python, numpy) and tensor states (torch CPU and CUDA)."""
    json_state = {"python": _to_json(random.getstate()), "numpy": rng.bit_generator.state}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return json_state, tensors


def set_rng_state(rng: np.random.Generator, json_state: dict, tensors: dict[str, torch.Tensor]) -> None:
    random.setstate(_from_json(json_state["python"]))
    rng.bit_generator.state = json_state["numpy"]
    torch.set_rng_state(tensors["torch"].cpu())
    cuda = [tensors[k].cpu() for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _to_json(state):
    return [list(x) if isinstance(x, tuple) else x for x in state]


def _from_json(state):
    return tuple(tuple(x) if isinstance(x, list) else x for x in state)
