"""sklearn's bundled 8x8 digits (1,797 images, 16 grey levels): no download, a second's training."""

from __future__ import annotations

import numpy as np

from rl_lab.data.common import Dataset, make_dataset, split_indices
from rl_lab.extras import require

DIGIT_NAMES = tuple(str(d) for d in range(10))


def load_digits(split: str, val_fraction: float, test_fraction: float = 0.2) -> Dataset:
    """The bundled set has no official test split: a fixed stratified 20% is test, val comes from the rest."""
    (datasets,) = require("vision", "sklearn.datasets", what="the digits dataset (scikit-learn's)")
    bunch = datasets.load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    idx = split_indices(labels, split, val_fraction, test_fraction)
    return make_dataset(
        "digits", split, images[idx], labels[idx], idx, num_classes=10, class_names=DIGIT_NAMES, source="sklearn digits"
    )
