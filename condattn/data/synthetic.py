"""Small synthetic CIFAR-100 sets: in memory, or as files in the official pickle layout.

Every class has its own colour and its own oriented stripe pattern, plus per-image noise and a
small random shift, so a tiny network learns it within an epoch or two while it is still not a
constant per class. Tests and smoke runs use these instead of the real data.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from condattn.data.cifar import ARCHIVE_NAME, FOLDER_NAME, CifarData

__all__ = ["make_synthetic_arrays", "synthetic_cifar100", "write_synthetic_cifar100"]

_NUM_COARSE = 20


def _class_images(
    labels: np.ndarray, *, num_classes: int, class_seed: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 ``(len(labels), 3, 32, 32)`` images whose look depends on the label."""
    style = np.random.default_rng(class_seed)  # the same class looks for train and test
    colours = style.uniform(50, 205, size=(num_classes, 3, 1, 1))
    angles = style.uniform(0, np.pi, size=num_classes)
    freqs = style.uniform(0.25, 1.0, size=num_classes)
    n = labels.shape[0]
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    direction = (
        np.cos(angles[labels])[:, None, None] * xx + np.sin(angles[labels])[:, None, None] * yy
    )
    stripes = np.sin(freqs[labels][:, None, None] * direction + phase)  # (n, 32, 32)
    images = colours[labels] + 45 * stripes[:, None] + rng.normal(0, 18, size=(n, 3, 32, 32))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def make_synthetic_arrays(
    *, n: int, num_classes: int = 100, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` int64 in the canonical order.

    Labels run round-robin ``0, 1, ..., num_classes - 1, 0, 1, ...``, so classes are balanced.
    The content depends only on ``(n, num_classes, seed, split)``.
    """
    if n < 1 or num_classes < 1:
        raise ValueError(f"need n >= 1 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    labels = np.arange(n, dtype=np.int64) % num_classes
    split_offset = {"train": 1, "test": 2}.get(split, 3)
    rng = np.random.default_rng([seed, split_offset])
    images = _class_images(labels, num_classes=num_classes, class_seed=seed, rng=rng)
    return images, labels


def synthetic_cifar100(
    *, n_train: int = 500, n_test: int = 100, num_classes: int = 100, seed: int = 0
) -> CifarData:
    """A synthetic CIFAR-100-shaped :class:`CifarData` in memory (no files)."""
    train_x, train_y = make_synthetic_arrays(
        n=n_train, num_classes=num_classes, seed=seed, split="train"
    )
    test_x, test_y = make_synthetic_arrays(
        n=n_test, num_classes=num_classes, seed=seed, split="test"
    )
    return CifarData(
        train_images=torch.from_numpy(train_x),
        train_labels=torch.from_numpy(train_y),
        test_images=torch.from_numpy(test_x),
        test_labels=torch.from_numpy(test_y),
        classes=_fine_names(num_classes),
        source=(
            f"synthetic (n_train={n_train}, n_test={n_test}, classes={num_classes}, seed={seed})"
        ),
    )


def _fine_names(num_classes: int) -> list[str]:
    return [f"class_{k:03d}" for k in range(num_classes)]


def _split_dict(split: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    rank = np.zeros_like(labels)
    seen: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):  # index of each image within its class
        rank[i] = seen.get(label, 0)
        seen[label] = rank[i] + 1
    coarse = labels * _NUM_COARSE // max(num_classes, 1)
    name = "training" if split == "train" else "testing"
    return {
        b"filenames": [f"{split}_{y}_{r}.png".encode() for y, r in zip(labels, rank)],
        b"batch_label": f"{name} batch 1 of 1".encode(),
        b"fine_labels": labels.tolist(),
        b"coarse_labels": coarse.tolist(),
        b"data": images.reshape(len(labels), -1),
    }


def write_synthetic_cifar100(
    root: str | os.PathLike[str],
    *,
    n_train: int = 500,
    n_test: int = 100,
    num_classes: int = 100,
    seed: int = 0,
    shuffle: bool = False,
    as_archive: bool = False,
) -> Path:
    """Writes a synthetic set in the official CIFAR-100 python layout.

    The files are pickled dicts (protocol 2, bytes keys, ``data`` a uint8 ``N x 3072`` array), as
    in the official release, so the reader is exercised exactly as on the real data.

    Args:
        root: output folder (created if needed).
        n_train: training images.
        n_test: test images.
        num_classes: fine classes (``meta`` lists this many names).
        seed: fixes the content.
        shuffle: store the images in a seeded random order instead of the canonical one; the set
            of (image, label) pairs is the same either way.
        as_archive: write ``root/cifar-100-python.tar.gz`` instead of the folder.

    Returns:
        The ``root/cifar-100-python`` folder, or the archive path when ``as_archive``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = make_synthetic_arrays(n=n, num_classes=num_classes, seed=seed, split=split)
        if shuffle:
            perm = np.random.default_rng([seed, 99, n]).permutation(n)
            images, labels = images[perm], labels[perm]
        splits[split] = _split_dict(split, images, labels, num_classes)
    n_coarse = min(_NUM_COARSE, num_classes)
    splits["meta"] = {
        b"fine_label_names": [name.encode() for name in _fine_names(num_classes)],
        b"coarse_label_names": [f"coarse_{k:02d}".encode() for k in range(n_coarse)],
    }
    with tempfile.TemporaryDirectory(dir=root, prefix=".synthetic-") as tmp:
        folder = Path(tmp) / FOLDER_NAME
        folder.mkdir()
        for name, obj in splits.items():
            with open(folder / name, "wb") as f:
                pickle.dump(obj, f, protocol=2)
        if as_archive:
            tmp_archive = Path(tmp) / ARCHIVE_NAME
            with tarfile.open(tmp_archive, "w:gz", compresslevel=1) as tar:
                tar.add(folder, arcname=FOLDER_NAME)
            target = root / ARCHIVE_NAME
            os.replace(tmp_archive, target)
            return target
        target = root / FOLDER_NAME
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
        return target
