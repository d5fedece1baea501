"""The dataset registry: a dict from a name to a loader that returns :class:`ImageData`.

Every loader takes the same :class:`LoadOptions` (each uses the fields that concern it) and
returns the same container, so nothing downstream changes per dataset::

    data = load_dataset("cifar10", root="data")
    data = load_dataset("imagefolder", root="~/tiny-imagenet", image_size=64)

Where the data are looked for when ``root`` is empty: the CIFAR sets search ``$CONDATTN_DATA``
(only there when it is set; a path that does not exist is an error, never skipped), else
``./data`` and ``../shared/data``; an image folder takes ``$CONDATTN_DATA`` or fails. A ``root``
that is given but does not exist is always an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from condattn.data.cifar import CIFAR10, CIFAR100, CifarSpec, data_env_path, find_cifar, load_cifar
from condattn.data.container import DataNotFoundError, ImageData
from condattn.data.imagefolder import load_imagefolder
from condattn.data.synthetic import synthetic_cifar100

__all__ = ["DATASETS", "LoadOptions", "list_datasets", "load_dataset", "register_dataset"]


@dataclass(frozen=True)
class LoadOptions:
    """What a loader may need; each loader reads the fields that concern it."""

    # Where the data are; empty = search (module docstring).
    root: str | os.PathLike[str] | None = None
    # CIFAR: fetch the official archive when none is found (needs network access).
    download: bool = False
    # Archive extractions and image-folder decodings; None = $CONDATTN_CACHE or ~/.cache/condattn.
    cache_dir: str | os.PathLike[str] | None = None
    # Image folders: side of the stored square images. CIFAR/synthetic: 0 or 32 (their size).
    image_size: int = 0
    # Image folders: 0 = require root/val/; else the share of each class held out.
    val_fraction: float = 0.0
    # Image folders: seeds the held-out split (the same for every run seed).
    split_seed: int = 0
    # Image folders: skip and count unreadable files instead of stopping at the first.
    skip_bad_images: bool = False
    # Image folders: decoding threads; 0 = one per core.
    workers: int = 0
    # Synthetic set: sizes and content seed.
    n_train: int = 1000
    n_test: int = 200
    seed: int = 0


def _check_native(name: str, size: int) -> None:
    if size not in (0, 32):
        raise ValueError(
            f"data.image_size={size} does not apply to {name!r}: its images are 32 px (set 0 or "
            "32); resizing is for the 'imagefolder' dataset"
        )


def _not_found(spec: CifarSpec) -> str:
    return (
        f"no {spec.title} data found. Looked in ./data and ../shared/data (relative to the "
        f"working directory and to the repository root); set $CONDATTN_DATA to look elsewhere. "
        f"Put {spec.archive} (or the extracted {spec.folder}/ folder) in one of them, or pass "
        "--data DIR (data.root). --download fetches the official archive into ./data (needs "
        "internet access); --synthetic trains on a small synthetic set instead."
    )


def _cifar(spec: CifarSpec, opts: LoadOptions) -> ImageData:
    _check_native(spec.name, opts.image_size)
    where = opts.root or find_cifar(spec)
    if not where and opts.download:
        where = Path("data")
    if not where:
        raise DataNotFoundError(_not_found(spec))
    return load_cifar(spec, where, download=opts.download, cache_dir=opts.cache_dir)


def _imagefolder(opts: LoadOptions) -> ImageData:
    root = opts.root or data_env_path()
    if not root:
        raise DataNotFoundError(
            "the 'imagefolder' dataset needs a root: set data.root (or pass --data DIR, or set "
            "$CONDATTN_DATA) to a folder with train/ and val/ class folders"
        )
    return load_imagefolder(
        root,
        image_size=opts.image_size,
        val_fraction=opts.val_fraction,
        split_seed=opts.split_seed,
        skip_bad_images=opts.skip_bad_images,
        cache_dir=opts.cache_dir,
        workers=opts.workers,
    )


def _synthetic(opts: LoadOptions) -> ImageData:
    _check_native("synthetic", opts.image_size)
    return synthetic_cifar100(n_train=opts.n_train, n_test=opts.n_test, seed=opts.seed)


DATASETS: dict[str, Callable[[LoadOptions], ImageData]] = {
    "cifar100": lambda opts: _cifar(CIFAR100, opts),
    "cifar10": lambda opts: _cifar(CIFAR10, opts),
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def register_dataset(name: str, loader: Callable[[LoadOptions], ImageData]) -> None:
    """Adds a dataset; refuses a name that is taken (remove it from :data:`DATASETS` first)."""
    if name in DATASETS:
        raise ValueError(f"dataset {name!r} is already registered; registered: {list_datasets()}")
    DATASETS[name] = loader


def load_dataset(name: str, options: LoadOptions | None = None) -> ImageData:
    """Loads the dataset ``name`` with ``options`` (defaults: :class:`LoadOptions`).

    Raises:
        ValueError: an unknown name (the message lists the registered ones) or an option that
            does not apply.
        DataNotFoundError: no data where they were looked for (the message says where).
        DataError: unusable data (the message names the file and the fix).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered: {list_datasets()}")
    data = DATASETS[name](options or LoadOptions())
    if not isinstance(data, ImageData):
        raise TypeError(f"the loader of {name!r} returned {type(data).__name__}, not ImageData")
    return data
