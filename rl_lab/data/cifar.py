"""CIFAR-10, binary version (fixed-length records; the pickled version is never read), checksummed and cached."""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path

import numpy as np

from rl_lab.data.common import Dataset, fetch, make_dataset, official_split_indices
from rl_lab.errors import UserError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORD = 1 + 3 * 32 * 32  # label byte, then the red, green and blue 32x32 planes


def parse_batches(archive: bytes, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels from the named .bin members of the archive, read in memory (nothing is
    extracted to disk, so no path inside the archive can escape the cache)."""
    chunks = []
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in members:
                path = f"cifar-10-batches-bin/{member}"
                f = tar.extractfile(path) if path in tar.getnames() else None
                if f is None:
                    raise UserError(f"{CIFAR10_ARCHIVE} lacks {path}: is it the CIFAR-10 binary version?")
                chunks.append((member, f.read()))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise UserError(f"{CIFAR10_ARCHIVE} is not a readable tar.gz archive ({err})") from None
    for member, data in chunks:
        if not data or len(data) % RECORD:
            raise UserError(f"{member} in {CIFAR10_ARCHIVE} is {len(data)} bytes, not whole {RECORD}-byte records")
    records = np.frombuffer(b"".join(data for _, data in chunks), np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise UserError(f"{CIFAR10_ARCHIVE} has label {labels.max()}; CIFAR-10 labels are 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(split: str, val_fraction: float, cache_dir: Path, url: str | None = None) -> Dataset:
    """Official 50,000/10,000 split; val is carved from the 50,000. Downloads the archive (162 MB) when missing."""
    archive = fetch([url or CIFAR10_URL], cache_dir / "cifar10" / CIFAR10_ARCHIVE, CIFAR10_MD5)
    members = ["test_batch.bin"] if split == "test" else [f"data_batch_{i}.bin" for i in range(1, 6)]
    images, labels = parse_batches(archive, members)
    idx = official_split_indices(labels, split, val_fraction)
    return make_dataset(
        "cifar10",
        split,
        images[idx],
        labels[idx],
        idx,
        num_classes=10,
        class_names=CIFAR10_CLASSES,
        source=str(cache_dir / "cifar10" / CIFAR10_ARCHIVE),
    )
