"""The one in-memory dataset container every loader returns, its errors and channel statistics.

Every dataset (CIFAR-100, CIFAR-10, an image folder, the synthetic sets) arrives as an
:class:`ImageData`: uint8 images ``N x 3 x H x W``, int64 labels, the class names, the per-channel
mean/std of the TRAIN split and a source string, and optionally a validation split held out of
the train images (:mod:`condattn.data.split`). So the loader, the augmentation and the training
loop never change per dataset.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "CifarData",
    "CifarDataError",
    "CifarNotFoundError",
    "DataError",
    "DataNotFoundError",
    "ImageData",
    "channel_stats",
    "source_origin",
]

# Statistics are rounded to this many decimals: the precision CIFAR's published values use, so
# the stats computed from the real CIFAR-100 train split equal CIFAR100_MEAN/STD exactly (and
# runs normalise bit-identically to the earlier hard-coded constants).
STATS_DECIMALS = 6


# How a loader says where its cache lives in a source line: cifar.py's archive ("extracted to",
# "cached extraction in") and imagefolder.py's decoded cache ("decoded into", "cached in",
# "decoded (not cached) for"), each followed by the cache's path.
_CACHE_CLAUSE = re.compile(
    r" (?:extracted to|cached extraction in|decoded into|cached in|decoded \(not cached\) for) "
    r"[^\s;]+"
)


def source_origin(source: str) -> str:
    """A source line without its cache location: where the data came from, not where they sit.

    The same archive is extracted to a cache named by its size and mtime, so two machines (or
    a fresh copy) give two source lines for the same data. ``compare`` reports the origin, so a
    study whose runs were trained on several machines names one dataset.

    >>> source_origin("archive /d/c100.tar.gz cached extraction in /cache/x/cifar-100-python")
    'archive /d/c100.tar.gz'
    """
    return _CACHE_CLAUSE.sub("", source)


class DataError(ValueError):
    """The data are unusable: corrupt, truncated, unreadable or in the wrong layout."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data (or a file or folder they need) are missing."""


# The first names of the two errors, kept so that existing ``except`` clauses keep working.
CifarDataError = DataError
CifarNotFoundError = DataNotFoundError


def channel_stats(images: torch.Tensor, *, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and (population) std of uint8 images, in [0, 1] units.

    The sums are exact: a 256-bin histogram per channel, counted in int64, so the result does not
    depend on the order or chunking of the images.

    Args:
        images: uint8 tensor ``(N, C, H, W)``.
        chunk: images per step, which bounds the scratch memory.

    Returns:
        ``(mean, std)``, each a tuple of C floats.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    c = images.shape[1]
    if images.shape[0] == 0:
        raise ValueError("channel_stats needs at least one image")
    hist = torch.zeros(c, 256, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].cpu()
        for k in range(c):  # bincount straight on uint8: no widened copy of the images
            hist[k] += torch.bincount(x[:, k].reshape(-1), minlength=256)
    hist = hist.to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    count = hist.sum(dim=1)
    mean = (hist * values).sum(dim=1) / count
    var = (hist * (values - mean.view(c, 1)).square()).sum(dim=1) / count
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), STATS_DECIMALS) for v in values)


@dataclass(frozen=True, repr=False)
class ImageData:
    """A labelled image dataset in memory, the same for every source.

    Attributes:
        train_images: uint8 tensor ``(N_train, C, H, W)``, RGB (C = 3 for every built-in loader).
        train_labels: int64 tensor ``(N_train,)`` in ``[0, len(classes))``.
        test_images: uint8 tensor ``(N_test, C, H, W)``: the test split (CIFAR) or the held-out
            validation split (image folders).
        test_labels: int64 tensor ``(N_test,)``.
        classes: the class names; label ``k`` is ``classes[k]``.
        source: where the data came from, for logs and result files.
        mean: per-channel mean of the TRAIN split in [0, 1] units, rounded to 6 decimals.
            None computes it from ``train_images`` (:func:`channel_stats`).
        std: per-channel population std of the TRAIN split, same units and rounding.
        val_images: uint8 ``(N_val, C, H, W)`` held out of the train images to choose the best
            epoch on (``data.val_fraction``), or None: no val split.
        val_labels: int64 ``(N_val,)``, or None.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.val_images is None) != (self.val_labels is None):
            raise ValueError("give both val_images and val_labels, or neither")
        for split in ("train", "test", "val")[: 3 if self.has_val else 2]:
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(
                    f"{split}_images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
                )
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{split}_labels must be (N,) with N = {x.shape[0]}, got {tuple(y.shape)}"
                )
        for split in ("test", "val")[: 2 if self.has_val else 1]:
            x = getattr(self, f"{split}_images")
            if self.train_images.shape[1:] != x.shape[1:] and len(x):
                raise ValueError(
                    f"train and {split} images differ in shape: "
                    f"{tuple(self.train_images.shape[1:])} vs {tuple(x.shape[1:])}"
                )
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then both are computed)")
        if self.mean is None:
            mean, std = channel_stats(self.train_images)
        else:
            mean, std = self.mean, self.std
        mean, std = _rounded(mean), _rounded(std)
        channels = self.train_images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} entries, got {mean} and {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def has_val(self) -> bool:
        """Whether a val split was held out of the train images (``data.val_fraction``)."""
        return self.val_images is not None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return tuple(self.train_images.shape[2:])

    def replace(self, **changes: object) -> ImageData:
        """A copy with some fields replaced; mean/std are kept unless given (e.g. subsets)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return (
            f"ImageData(train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)}, "
            + (f"val={tuple(self.val_images.shape)}, " if self.has_val else "")
            + f"classes={len(self.classes)}, "
            f"mean={self.mean}, std={self.std}, source={self.source!r})"
        )


# The container's first name, from when CIFAR-100 was the only dataset.
CifarData = ImageData
