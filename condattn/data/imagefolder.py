"""Image folders (the torchvision ``ImageFolder`` layout), decoded once into a uint8 cache.

Layout: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>``; or, with
``val_fraction > 0``, class folders to split (``root/<class>/<image>``, or ``root/train/<class>``
without ``val/``). Class names are the sorted folder names (label ``k`` is the ``k``-th), files are
taken in sorted name order, so nothing depends on the order the file system lists them in.

Every image is decoded once, in parallel threads (PIL releases the GIL while it decodes and
resizes), converted to RGB, resized so its shorter side is ``image_size`` (PIL bilinear, as
``torchvision.transforms.Resize``) and centre-cropped to ``image_size x image_size`` (as
``CenterCrop``). The result, with the train split's per-channel mean/std, is written atomically
to ``<cache_dir>/imagefolder/<root name>-<root hash>-<size>px-<key>.pt`` (``cache_dir``:
``$CONDATTN_CACHE`` or ``~/.cache/condattn``; never under ``root``, which may be read-only).
``key`` hashes every file's relative path, size and mtime plus the settings, so a changed, added
or removed file (or a new setting) decodes again; the older cache of the same root and size is
then deleted. Training then runs from memory.

Colour modes: grayscale (``L``, ``1``), palette (``P``), ``CMYK``/``YCbCr`` etc. are converted to
RGB; images with alpha (``RGBA``, ``LA``, ``PA``, palette or grey with a transparent colour) are
composited on black; 16-bit grey (``I;16*``, and ``I``, taken as 16-bit) keeps its high byte.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from condattn._io import atomic_torch_save, derive_seed
from condattn.data._cache import default_cache_dir, removing_new_dirs
from condattn.data.container import DataError, DataNotFoundError, ImageData, channel_stats

__all__ = ["IMAGE_EXTENSIONS", "decode_image", "load_imagefolder", "split_files"]

# Progress and cache lines (INFO), a failed cache write (WARNING).
logger = logging.getLogger(__name__)

# torchvision's IMG_EXTENSIONS (matched case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_FORMAT = 1  # bump when the decoding changes, so old caches are not reused
_SKIP_HINT = "or set data.skip_bad_images = true to skip unreadable images (they are counted)"

Files = dict[str, list[str]]  # class name -> sorted file names (relative to the class folder)


@dataclass(frozen=True)
class _Split:
    """The files of one split: ``folders[c] / files[c][i]`` for each class ``c``."""

    folders: dict[str, Path]
    files: Files

    def paths(self, classes: list[str]) -> tuple[list[Path], list[int]]:
        paths, labels = [], []
        for label, cls in enumerate(classes):
            paths += [self.folders[cls] / name for name in self.files[cls]]
            labels += [label] * len(self.files[cls])
        return paths, labels


def _class_folders(folder: Path) -> dict[str, Path]:
    """Class name -> folder for the visible subfolders of ``folder``; an error if there are none."""
    if not folder.is_dir():
        raise DataNotFoundError(f"{folder} is not a folder")
    found = {p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not found:
        raise DataError(
            f"{folder} has no class subfolders; expected {folder}/<class>/<image> (the "
            "torchvision ImageFolder layout)"
        )
    return dict(sorted(found.items()))


def _scan(folder: Path) -> _Split:
    """Lists the images of every class folder of ``folder``; errors on empty class folders."""
    folders = _class_folders(folder)
    files = {
        cls: sorted(
            p.name
            for p in path.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
        )
        for cls, path in folders.items()
    }
    empty = [str(folders[cls]) for cls, names in files.items() if not names]
    if empty:
        raise DataError(
            f"class folder(s) without images: {', '.join(empty)}; put images in them (extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}) or remove them"
        )
    return _Split(folders, files)


def split_files(files: Files, *, fraction: float, seed: int) -> tuple[Files, Files]:
    """Splits every class's files into train and val, stratified and reproducibly.

    Class ``c`` with ``n`` files gives ``round(fraction * n)`` of them (at least 1, at most
    ``n - 1``) to val, chosen by a permutation seeded with ``derive_seed(seed, "val_split", c)``
    of the SORTED names, so the split depends only on the names, ``fraction`` and ``seed``.

    Returns:
        ``(train, val)``, each class -> sorted names.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must lie in (0, 1) to split, got {fraction}")
    train: Files = {}
    val: Files = {}
    for cls in sorted(files):
        names = sorted(files[cls])
        if len(names) < 2:
            raise DataError(
                f"class {cls!r} has {len(names)} image(s); splitting off a val set "
                f"(data.val_fraction={fraction}) needs at least 2 per class"
            )
        n_val = min(max(round(fraction * len(names)), 1), len(names) - 1)
        gen = torch.Generator().manual_seed(derive_seed(seed, "val_split", cls))
        perm = torch.randperm(len(names), generator=gen).tolist()
        val[cls] = sorted(names[i] for i in perm[:n_val])
        train[cls] = sorted(names[i] for i in perm[n_val:])
    return train, val


def _layout(root: Path, *, val_fraction: float, seed: int) -> tuple[_Split, _Split]:
    """The train and val splits of ``root`` (see the module docstring)."""
    if not root.exists():
        raise DataNotFoundError(f"image folder root {root} does not exist")
    train_dir, val_dir = root / "train", root / "val"
    if val_dir.is_dir() and not train_dir.is_dir():
        raise DataError(f"{root} has val/ but no train/ folder")
    if val_dir.is_dir():
        if val_fraction > 0:
            raise DataError(
                f"{root} has a val/ folder and data.val_fraction={val_fraction} asks to split "
                "off another; set data.val_fraction = 0 to use val/, or remove val/"
            )
        train, val = _scan(train_dir), _scan(val_dir)
        if set(train.files) != set(val.files):
            only_t = sorted(set(train.files) - set(val.files))
            only_v = sorted(set(val.files) - set(train.files))
            raise DataError(
                f"{train_dir} and {val_dir} hold different classes: only in train: {only_t}; "
                f"only in val: {only_v}"
            )
        return train, val
    source = train_dir if train_dir.is_dir() else root
    if val_fraction <= 0:
        raise DataError(
            f"{root} has no val/ folder: expected {root}/train/<class>/ and {root}/val/<class>/, "
            "or set data.val_fraction (e.g. 0.1) to split a held-out set off the class folders "
            f"in {source}"
        )
    whole = _scan(source)
    train, val = split_files(whole.files, fraction=val_fraction, seed=seed)
    return _Split(whole.folders, train), _Split(whole.folders, val)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (alpha composited on black, 16-bit grey to its high byte)."""
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.int64).clip(0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def _resize_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side -> ``size`` (bilinear), then the centre ``size x size``: torchvision's
    ``Resize(size)`` + ``CenterCrop(size)`` on PIL images, with the same rounding."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    img = img.resize((new_w, new_h), Image.BILINEAR)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def decode_image(path: str | os.PathLike[str], *, size: int) -> np.ndarray:
    """Decodes one image file to uint8 ``(3, size, size)`` RGB (see :func:`_resize_crop`)."""
    with Image.open(path) as img:
        img.load()  # decode fully here, so a truncated file fails here
        rgb = _resize_crop(_to_rgb(img), size)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def _progress(total: int, desc: str, show_bar: bool | None):
    """A callable ``tick(k)`` that advances a tqdm bar (on a terminal) or logs every ~10%."""
    if show_bar is None:
        show_bar = sys.stderr.isatty()
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="img")
        return bar.update, bar.close
    step = max(total // 10, 1)
    state = {"done": 0}

    def tick(k: int) -> None:
        before, state["done"] = state["done"], state["done"] + k
        if state["done"] // step > before // step or state["done"] == total:
            logger.info(f"{desc}: {state['done']}/{total} images")

    return tick, lambda: None


def _decode_all(
    paths: list[Path],
    *,
    size: int,
    workers: int,
    skip_bad: bool,
    tick: Callable[[int], None],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decodes ``paths`` in parallel into one uint8 array.

    Returns:
        ``(images, ok, skipped)``: ``images[i]`` is valid where ``ok[i]``; ``skipped`` lists
        ``"<path>: <error>"`` for each unreadable file (only with ``skip_bad``).

    Raises:
        DataError: naming the first unreadable file (in sorted order), without ``skip_bad``.
    """
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    ok = np.ones(len(paths), dtype=bool)

    def work(i: int) -> str | None:
        try:
            out[i] = decode_image(paths[i], size=size)
        except Exception as err:  # PIL raises many types on a bad file
            return f"{type(err).__name__}: {err}"
        return None

    skipped = []
    chunk = 64 * workers  # bounded: never a future per image of a million-image folder
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as ex:
        for start in range(0, len(paths), chunk):
            stop = min(start + chunk, len(paths))
            for i, err in zip(range(start, stop), ex.map(work, range(start, stop))):
                if err is not None and not skip_bad:
                    ex.shutdown(wait=True, cancel_futures=True)
                    raise DataError(
                        f"cannot decode image {paths[i]} ({err}); fix or delete it, {_SKIP_HINT}"
                    )
                if err is not None:
                    ok[i] = False
                    skipped.append(f"{paths[i]}: {err}")
            tick(stop - start)
    return out, ok, skipped


def _cache_file(
    root: Path, cache_dir: Path, train: _Split, val: _Split, settings: dict[str, object]
) -> Path:
    """``<cache_dir>/imagefolder/<root name>-<root hash>-<size>px-<content key>.pt``."""
    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    for split_name, split in (("train", train), ("val", val)):
        for cls in sorted(split.files):
            for name in split.files[cls]:
                st = (split.folders[cls] / name).stat()
                h.update(f"{split_name}/{cls}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    resolved = root.resolve()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", resolved.name) or "root"
    where = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    folder = cache_dir / "imagefolder"
    return folder / f"{stem}-{where}-{settings['image_size']}px-{h.hexdigest()[:16]}.pt"


def _read_cache(path: Path) -> dict[str, object] | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is only a cache: decode again
        return None
    return blob if isinstance(blob, dict) and blob.get("format") == _FORMAT else None


def _decode_splits(
    train: _Split,
    val: _Split,
    classes: list[str],
    *,
    size: int,
    workers: int,
    skip_bad: bool,
    tick: Callable[[int], None],
) -> dict[str, object]:
    """Decodes both splits; returns the cache's contents (images, labels, stats, skipped)."""
    blob: dict[str, object] = {"format": _FORMAT, "classes": classes, "skipped": []}
    for name, split in (("train", train), ("test", val)):
        paths, labels = split.paths(classes)
        images, ok, skipped = _decode_all(
            paths, size=size, workers=workers, skip_bad=skip_bad, tick=tick
        )
        kept = torch.as_tensor(labels, dtype=torch.int64)[torch.from_numpy(ok)]
        missing = sorted(set(range(len(classes))) - set(kept.tolist()))
        if missing:
            folders = [str(split.folders[classes[k]]) for k in missing]
            raise DataError(f"no readable image left in {', '.join(folders)} (all skipped)")
        blob[f"{name}_images"] = torch.from_numpy(images[ok] if skipped else images)
        blob[f"{name}_labels"] = kept
        blob["skipped"] += skipped
    mean, std = channel_stats(blob["train_images"])
    blob["mean"], blob["std"] = list(mean), list(std)
    return blob


def _write_cache(blob: dict[str, object], path: Path) -> bool:
    """Writes the cache atomically and drops older caches of the same root and size.

    A failed write only costs the next run a new decoding, so it is logged, not raised.
    """
    try:
        with removing_new_dirs(path.parent):
            atomic_torch_save(blob, path)
    except OSError as err:
        logger.warning(
            f"warning: could not write the decode cache {path} ({err}); set $CONDATTN_CACHE"
        )
        return False
    for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.pt"):
        if old != path:  # the same root and size, older content or settings
            old.unlink(missing_ok=True)
    return True


def _cached_or_decoded(
    root: Path,
    train: _Split,
    val: _Split,
    *,
    path: Path,
    settings: dict[str, object],
    workers: int,
    progress: bool | None,
) -> tuple[dict[str, object], str]:
    """The cache at ``path`` if it is valid, else both splits decoded (and written there).

    Returns:
        ``(blob, verb)``: the cache's contents and how they were obtained, for the source line.
    """
    blob = _read_cache(path)
    if blob is not None:
        return blob, "cached in"
    total = sum(map(len, train.files.values())) + sum(map(len, val.files.values()))
    tick, close = _progress(total, f"decoding {root}", progress)
    try:
        blob = _decode_splits(
            train,
            val,
            sorted(train.files),
            size=int(settings["image_size"]),
            workers=workers,
            skip_bad=bool(settings["skip_bad_images"]),
            tick=tick,
        )
    finally:
        close()
    verb = "decoded into" if _write_cache(blob, path) else "decoded (not cached) for"
    logger.info(f"decoded {total} images of {root} ({verb} {path})")
    return blob, verb


def load_imagefolder(
    root: str | os.PathLike[str],
    *,
    image_size: int,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    skip_bad_images: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    progress: bool | None = None,
) -> ImageData:
    """Loads an image folder as uint8 tensors, decoding it once into a cache.

    Args:
        root: holds ``train/`` and ``val/`` class folders, or (with ``val_fraction``) class
            folders to split (module docstring).
        image_size: the side of the stored square images (shorter side resized, centre crop).
        val_fraction: 0 requires ``root/val/``; else the share of each class held out as the
            val ("test") split, stratified and reproducible (:func:`split_files`).
        split_seed: seeds that split (independent of the run's seed, so that every run of a
            comparison holds out the same images).
        skip_bad_images: skip (and count) unreadable files instead of stopping at the first.
        cache_dir: cache root; default ``$CONDATTN_CACHE`` or ``~/.cache/condattn``.
        workers: decoding threads; 0 = one per CPU core.
        progress: a tqdm bar; None = only when stderr is a terminal (else progress lines).

    Progress and cache lines go to the ``condattn.data.imagefolder`` logger (INFO; a failed
    cache write at WARNING).

    Returns:
        :class:`ImageData` with the val split as ``test_*`` and the train split's mean/std.

    Raises:
        DataNotFoundError: ``root`` does not exist.
        DataError: no class subfolders, an empty class folder, different classes in train/ and
            val/, or an unreadable image (named) without ``skip_bad_images``.
    """
    if image_size < 1:
        raise ValueError(
            f"the imagefolder dataset needs data.image_size >= 1 (e.g. 64 or 224), got {image_size}"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
    root = Path(root).expanduser()
    train, val = _layout(root, val_fraction=val_fraction, seed=split_seed)
    settings = {
        "format": _FORMAT,
        "image_size": image_size,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "skip_bad_images": skip_bad_images,
    }
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _cache_file(root, cache, train, val, settings)
    blob, verb = _cached_or_decoded(
        root,
        train,
        val,
        path=path,
        settings=settings,
        workers=workers or os.cpu_count() or 1,
        progress=progress,
    )
    skipped = blob["skipped"]
    note = f"; skipped {len(skipped)} unreadable file(s), first: {skipped[0]}" if skipped else ""
    return ImageData(
        blob["train_images"],
        blob["train_labels"],
        blob["test_images"],
        blob["test_labels"],
        list(blob["classes"]),
        f"imagefolder {root.resolve()} at {image_size}px {verb} {path}{note}",
        mean=tuple(blob["mean"]),
        std=tuple(blob["std"]),
    )
