"""A validation split held out of the train images: stratified, seeded, fixed by the images.

``data.val_fraction > 0`` on CIFAR (and the synthetic set, and image folders that have their own
``val/``) holds out a share of every class of the TRAIN split as a validation split. The best epoch
is chosen on it, so the test set is never used to select anything (:mod:`condattn.train.loop`).

The split depends only on the images, the fraction and ``split_seed``: within each class the
images are ordered by the SHA-1 of their bytes (so neither the order of the images in the files,
nor the run's seed, nor the variant changes it), then permuted by a generator seeded with
``derive_seed(split_seed, "val_split", label)``; the first ``round(fraction * n)`` of them (at
least 1, at most ``n - 1``) are held out. Every run of a comparison therefore trains and selects
on the same images, and its pairs stay paired.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from condattn._io import derive_seed
from condattn.data.container import DataError, ImageData

__all__ = ["holdout_indices", "split_validation"]


def _content_order(images: torch.Tensor, idx: np.ndarray) -> np.ndarray:
    """``idx`` sorted by the SHA-1 of each image's bytes (ties: identical images, any order)."""
    flat = images.reshape(images.shape[0], -1).numpy()
    keys = [hashlib.sha1(flat[i].tobytes()).digest() for i in idx]
    return idx[sorted(range(len(idx)), key=keys.__getitem__)]


def holdout_indices(
    images: torch.Tensor, labels: torch.Tensor, *, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices kept for training and held out, stratified by class (module docstring).

    Returns:
        ``(train_idx, val_idx)``: int64 tensors, each sorted (the images keep their file order).

    Raises:
        ValueError: ``fraction`` outside (0, 1).
        DataError: a class with fewer than 2 images (nothing to hold out without emptying it).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must lie in (0, 1) to split, got {fraction}")
    y = labels.numpy()
    keep, held = [], []
    for label in np.unique(y).tolist():
        idx = _content_order(images, np.flatnonzero(y == label))
        if len(idx) < 2:
            raise DataError(
                f"class {label} has {len(idx)} train image(s); holding out a val split "
                f"(data.val_fraction={fraction}) needs at least 2 per class"
            )
        n_val = min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        gen = torch.Generator().manual_seed(derive_seed(seed, "val_split", int(label)))
        perm = torch.randperm(len(idx), generator=gen).numpy()
        held.append(idx[perm[:n_val]])
        keep.append(idx[perm[n_val:]])
    as_sorted = lambda parts: torch.from_numpy(np.sort(np.concatenate(parts))).long()  # noqa: E731
    return as_sorted(keep), as_sorted(held)


def split_validation(data: ImageData, *, fraction: float, seed: int) -> ImageData:
    """``data`` with ``fraction`` of every class of its train split moved to ``val_*``.

    The test split is untouched; mean/std are recomputed from the images still trained on.

    Raises:
        ValueError: ``data`` already has a val split, or ``fraction`` outside (0, 1).
        DataError: a class with fewer than 2 train images.
    """
    if data.has_val:
        raise ValueError(f"{data.source} already has a val split; hold out only one")
    train_idx, val_idx = holdout_indices(
        data.train_images, data.train_labels, fraction=fraction, seed=seed
    )
    return ImageData(
        data.train_images[train_idx],
        data.train_labels[train_idx],
        data.test_images,
        data.test_labels,
        data.classes,
        f"{data.source} [val: {fraction:g} of each class held out of train, split_seed {seed}]",
        val_images=data.train_images[val_idx],
        val_labels=data.train_labels[val_idx],
    )
