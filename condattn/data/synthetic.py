"""Small synthetic CIFAR sets: in memory, or as files in the official CIFAR-100 / CIFAR-10 pickle
layouts.

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

from condattn.data.cifar import CIFAR10, CIFAR100, CifarSpec
from condattn.data.container import ImageData

__all__ = [
    "make_synthetic_arrays",
    "synthetic_cifar100",
    "write_synthetic_cifar10",
    "write_synthetic_cifar100",
]

_NUM_COARSE = 20
_IMAGE_BYTES = 3 * 32 * 32


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
) -> ImageData:
    """A synthetic CIFAR-shaped :class:`ImageData` in memory (no files); mean/std are computed
    from its train split."""
    train_x, train_y = make_synthetic_arrays(
        n=n_train, num_classes=num_classes, seed=seed, split="train"
    )
    test_x, test_y = make_synthetic_arrays(
        n=n_test, num_classes=num_classes, seed=seed, split="test"
    )
    return ImageData(
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


def _write_files(
    root: str | os.PathLike[str], spec: CifarSpec, files: dict[str, dict], *, as_archive: bool
) -> Path:
    """Pickles ``files`` (protocol 2) into ``root/<spec.folder>`` or ``root/<spec.archive>``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".synthetic-") as tmp:
        folder = Path(tmp) / spec.folder
        folder.mkdir()
        for name, obj in files.items():
            with open(folder / name, "wb") as f:
                pickle.dump(obj, f, protocol=2)
        if as_archive:
            tmp_archive = Path(tmp) / spec.archive
            with tarfile.open(tmp_archive, "w:gz", compresslevel=1) as tar:
                tar.add(folder, arcname=spec.folder)
            target = root / spec.archive
            os.replace(tmp_archive, target)
            return target
        target = root / spec.folder
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
        return target


def _arrays(
    split: str, n: int, *, num_classes: int, seed: int, shuffle: bool
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = make_synthetic_arrays(n=n, num_classes=num_classes, seed=seed, split=split)
    if shuffle:
        perm = np.random.default_rng([seed, 99, n]).permutation(n)
        images, labels = images[perm], labels[perm]
    return images, labels


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
    opts = {"num_classes": num_classes, "seed": seed, "shuffle": shuffle}
    files = {
        split: _split_dict(split, *_arrays(split, n, **opts), num_classes)
        for split, n in (("train", n_train), ("test", n_test))
    }
    files["meta"] = {
        b"fine_label_names": [name.encode() for name in _fine_names(num_classes)],
        b"coarse_label_names": [
            f"coarse_{k:02d}".encode() for k in range(min(_NUM_COARSE, num_classes))
        ],
    }
    return _write_files(root, CIFAR100, files, as_archive=as_archive)


def write_synthetic_cifar10(
    root: str | os.PathLike[str],
    *,
    n_train: int = 50,
    n_test: int = 20,
    num_classes: int = 10,
    seed: int = 0,
    as_archive: bool = False,
) -> Path:
    """Writes a synthetic set in the official CIFAR-10 python layout.

    ``cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` (the train images in the
    canonical order of :func:`make_synthetic_arrays`, split into five consecutive batches as even
    as possible), ``test_batch`` and ``batches.meta``; each a protocol-2 pickle with bytes keys
    (``data``, ``labels``, ``filenames``, ``batch_label``; meta: ``label_names``,
    ``num_cases_per_batch``, ``num_vis``), as in the official release.

    Args:
        root: output folder (created if needed).
        n_train: training images (at least 5: one per batch file).
        n_test: test images.
        num_classes: classes (``batches.meta`` lists this many names).
        seed: fixes the content.
        as_archive: write ``root/cifar-10-python.tar.gz`` instead of the folder.

    Returns:
        The ``root/cifar-10-batches-py`` folder, or the archive path when ``as_archive``.
    """
    n_batches = len(CIFAR10.train_files)
    if n_train < n_batches:
        raise ValueError(f"n_train must be >= {n_batches} (one image per batch), got {n_train}")
    opts = {"num_classes": num_classes, "seed": seed, "shuffle": False}
    train_x, train_y = _arrays("train", n_train, **opts)
    parts = np.array_split(np.arange(n_train), n_batches)
    files = {
        name: _batch10(f"training batch {k + 1} of {n_batches}", train_x[idx], train_y[idx])
        for k, (name, idx) in enumerate(zip(CIFAR10.train_files, parts, strict=True))
    }
    files["test_batch"] = _batch10("testing batch 1 of 1", *_arrays("test", n_test, **opts))
    files["batches.meta"] = {
        b"label_names": [name.encode() for name in _fine_names(num_classes)],
        b"num_cases_per_batch": len(parts[0]),
        b"num_vis": _IMAGE_BYTES,
    }
    return _write_files(root, CIFAR10, files, as_archive=as_archive)


def _batch10(batch_label: str, images: np.ndarray, labels: np.ndarray) -> dict:
    return {
        b"batch_label": batch_label.encode(),
        b"labels": labels.tolist(),
        b"data": images.reshape(len(labels), -1),
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(labels))],
    }
