"""CIFAR-100 reader: the official "python version" pickles -> uint8 tensors.

The reader accepts the extracted ``cifar-100-python/`` folder, a folder that holds it, the
``cifar-100-python.tar.gz`` archive, or a folder that holds the archive. An archive is extracted
once into a cache folder (never next to the archive, which may be read-only) and re-used.

The pickles are read here rather than through ``torchvision.datasets.CIFAR100``, because that class
checks the md5 of ``train``/``test`` and rejects copies whose in-file order differs from the
official one (see ``shared/data/README.md``). Nothing here depends on the in-file order.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ARCHIVE_NAME",
    "CIFAR100_MD5",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "FOLDER_NAME",
    "CifarData",
    "CifarDataError",
    "CifarNotFoundError",
    "channel_stats",
    "find_cifar100",
    "load_cifar100",
]

ARCHIVE_NAME = "cifar-100-python.tar.gz"
FOLDER_NAME = "cifar-100-python"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"

# Per-channel mean/std of the 50,000 training images, in [0, 1] units (shared/data/README.md).
CIFAR100_MEAN = (0.507075, 0.486549, 0.440918)
CIFAR100_STD = (0.267334, 0.256438, 0.276150)

_SPLIT_FILES = ("train", "test", "meta")
_IMAGE_BYTES = 3 * 32 * 32
_FIX = (
    "put {archive} (or the extracted {folder}/ folder) in {where}, or pass download=True "
    "(--download on the command line) where there is network access"
)


class CifarDataError(ValueError):
    """The CIFAR-100 files are unusable: corrupt, truncated or in the wrong layout."""


class CifarNotFoundError(CifarDataError, FileNotFoundError):
    """The CIFAR-100 files (or one of them) are missing."""


@dataclass(frozen=True, repr=False)
class CifarData:
    """CIFAR-100 in memory.

    Attributes:
        train_images: uint8 tensor ``(N_train, 3, 32, 32)``, RGB.
        train_labels: int64 tensor ``(N_train,)`` of fine labels in ``[0, len(classes))``.
        test_images: uint8 tensor ``(N_test, 3, 32, 32)``.
        test_labels: int64 tensor ``(N_test,)``.
        classes: the fine label names from ``meta`` (100 for the real set).
        source: where the data came from, for logs and result files.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        """Number of fine classes."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"CifarData(train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)}, classes={len(self.classes)}, "
            f"source={self.source!r})"
        )


def _fix_hint(where: Path | str) -> str:
    return _FIX.format(archive=ARCHIVE_NAME, folder=FOLDER_NAME, where=where)


def _has_split_files(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in _SPLIT_FILES)


def _locate(root: Path) -> tuple[str, Path] | None:
    """Returns ``("folder", dir)`` or ``("archive", file)`` for ``root``, or None."""
    if root.is_file():
        if root.name in _SPLIT_FILES:  # e.g. .../cifar-100-python/train
            return "folder", root.parent
        return "archive", root
    if not root.is_dir():
        return None
    folder = None
    if (root / FOLDER_NAME).is_dir():
        folder = root / FOLDER_NAME
    elif root.name == FOLDER_NAME or _has_split_files(root):
        folder = root
    complete = folder is not None and all((folder / n).is_file() for n in _SPLIT_FILES)
    if not complete and (root / ARCHIVE_NAME).is_file():
        return "archive", root / ARCHIVE_NAME  # an incomplete extraction next to the archive
    return ("folder", folder) if folder is not None else None


def _default_cache_dir() -> Path:
    env = os.environ.get("CONDATTN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "condattn"


def _archive_key(archive: Path) -> str:
    # Size + mtime identify the archive without hashing 170 MB on every start; a replaced or
    # re-downloaded archive gets a new key and is extracted again.
    st = archive.stat()
    digest = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"cifar100-{st.st_size}-{digest}"


def _member_target(name: str) -> str | None:
    """Maps an archive member name to one of the split files, or None to skip it."""
    norm = posixpath.normpath(name.lstrip("/"))
    parts = norm.split("/")
    if len(parts) == 2 and parts[0] == FOLDER_NAME and parts[1] in _SPLIT_FILES:
        return parts[1]
    return None


def _extract_archive(archive: Path, dest: Path) -> None:
    """Safely extracts ``train``, ``test`` and ``meta`` from ``archive`` into ``dest``.

    Only regular files named ``cifar-100-python/{train,test,meta}`` are written, to paths this
    function chooses, so no member can escape ``dest`` (no path traversal, links or devices). The
    files land in a temporary folder that is renamed into place atomically.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        found = set()
        try:
            with tarfile.open(archive, mode="r|gz") as tar:
                for member in tar:
                    target = _member_target(member.name)
                    if target is None or not member.isfile():
                        continue
                    src = tar.extractfile(member)
                    assert src is not None  # a regular file always has a stream
                    with src, open(tmp / target, "wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
                    found.add(target)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise CifarDataError(
                f"cannot read the archive {archive}: {type(err).__name__}: {err}. It is corrupt or "
                f"truncated; replace it with a good copy of {ARCHIVE_NAME} (md5 of the official "
                f"file: {CIFAR100_MD5}) or use the extracted {FOLDER_NAME}/ folder."
            ) from err
        missing = [name for name in _SPLIT_FILES if name not in found]
        if missing:
            raise CifarDataError(
                f"the archive {archive} has no {', '.join(f'{FOLDER_NAME}/{m}' for m in missing)}; "
                f"it is not the CIFAR-100 python version. {_fix_hint(archive.parent)}."
            )
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # another process may have won the race; keep its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached_extraction(archive: Path, cache_dir: Path) -> tuple[Path, bool]:
    """Returns the extracted folder for ``archive`` and whether it was extracted just now."""
    dest = cache_dir / _archive_key(archive) / FOLDER_NAME
    if all((dest / name).is_file() for name in _SPLIT_FILES):
        return dest, False
    try:
        if dest.exists():  # a partial leftover (should not happen with the atomic rename)
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CifarDataError(
            f"cannot write the extraction cache {dest.parent} for {archive} ({err}); pass a "
            "writable cache_dir (or set $CONDATTN_CACHE), or extract the archive yourself and "
            f"pass the {FOLDER_NAME}/ folder."
        ) from err
    _extract_archive(archive, dest)
    return dest, True


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that only builds dicts, lists, str, bytes, ints and numpy arrays.

    The CIFAR pickles need nothing else, and refusing other globals keeps a tampered file from
    running code.
    """

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return np.ndarray.__reduce__(np.zeros(0))[0]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":  # how protocol 2 stores bytes from Python 3
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR pickle")


def _read_pickle(path: Path, *, hint: str) -> dict[str, object]:
    if not path.is_file():
        raise CifarNotFoundError(f"missing CIFAR-100 file {path}; {hint}.")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as err:  # pickle raises many types on bad input
        raise CifarDataError(
            f"cannot unpickle {path}: {type(err).__name__}: {err}. The file is truncated or "
            f"corrupt; replace the {FOLDER_NAME}/ folder with a fresh copy ({hint})."
        ) from err
    if not isinstance(obj, dict):
        raise CifarDataError(f"{path} holds a {type(obj).__name__}, expected a dict; {hint}.")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _require(d: dict[str, object], keys: tuple[str, ...], path: Path, hint: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise CifarDataError(
            f"{path} lacks the key(s) {missing} (has {sorted(d)}); it is not a CIFAR-100 "
            f"python-version file. {hint}."
        )


def _decode_names(names: object, path: Path, key: str) -> list[str]:
    if not isinstance(names, list) or not names:
        raise CifarDataError(f"{path}: {key!r} must be a non-empty list of names.")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _read_split(path: Path, *, num_classes: int, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = _read_pickle(path, hint=hint)
    _require(d, ("data", "fine_labels"), path, hint)
    data = d["data"]
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8).reshape(-1, _IMAGE_BYTES)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise CifarDataError(
            f"{path}: 'data' must be a uint8 array N x {_IMAGE_BYTES}, got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}. "
            f"{hint}."
        )
    n = data.shape[0]
    if data.shape[1] != _IMAGE_BYTES or n == 0:
        raise CifarDataError(
            f"{path}: 'data' has shape {tuple(data.shape)}, expected (N, {_IMAGE_BYTES}) with "
            f"N > 0 (3 x 32 x 32 bytes per image). {hint}."
        )
    labels = np.asarray(d["fine_labels"])
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise CifarDataError(
            f"{path}: 'fine_labels' must be {n} integers (one per image), got shape "
            f"{labels.shape} dtype {labels.dtype}. {hint}."
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise CifarDataError(
            f"{path}: fine labels must lie in [0, {num_classes}), found "
            f"[{labels.min()}, {labels.max()}]. {hint}."
        )
    images = torch.from_numpy(np.array(data, dtype=np.uint8, order="C", copy=True))
    return images.view(n, 3, 32, 32), torch.from_numpy(labels.astype(np.int64))


def _read_folder(folder: Path, *, source: str) -> CifarData:
    hint = _fix_hint(folder.parent)
    meta_path = folder / "meta"
    meta = _read_pickle(meta_path, hint=hint)
    _require(meta, ("fine_label_names",), meta_path, hint)
    classes = _decode_names(meta["fine_label_names"], meta_path, "fine_label_names")
    train_x, train_y = _read_split(folder / "train", num_classes=len(classes), hint=hint)
    test_x, test_y = _read_split(folder / "test", num_classes=len(classes), hint=hint)
    return CifarData(train_x, train_y, test_x, test_y, classes, source)


def _download(root: Path) -> None:
    from urllib.error import URLError

    from torchvision.datasets import utils as tv_utils  # looked up at call time: tests patch it

    try:
        root.mkdir(parents=True, exist_ok=True)
        tv_utils.download_and_extract_archive(
            CIFAR100_URL, download_root=str(root), filename=ARCHIVE_NAME, md5=CIFAR100_MD5
        )
    except (URLError, OSError, RuntimeError) as err:
        raise CifarNotFoundError(
            f"could not download {CIFAR100_URL} into {root} ({type(err).__name__}: {err}). "
            f"There is probably no network access (or {root} is not writable). Fetch "
            f"{ARCHIVE_NAME} elsewhere and put it (or the extracted {FOLDER_NAME}/ folder) in "
            f"{root}, then run again without download."
        ) from err


def load_cifar100(
    root: str | os.PathLike[str],
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> CifarData:
    """Loads CIFAR-100 (the official python-pickle layout) as uint8 tensors.

    Args:
        root: one of: a folder holding ``cifar-100-python/{train,test,meta}``; that
            ``cifar-100-python`` folder itself; a folder holding ``cifar-100-python.tar.gz``; or
            the archive path itself. It may be read-only.
        download: fetch the official archive into ``root`` when no data is found there (uses
            ``torchvision.datasets.utils.download_and_extract_archive``; needs network access).
            Skipped when the files are already there.
        cache_dir: where archives are extracted, once per archive (keyed by its size and
            mtime). Defaults to ``$CONDATTN_CACHE`` or ``~/.cache/condattn``.

    Returns:
        The train and test splits in the files' own order, the fine class names and a
        ``source`` string saying where they came from.

    Raises:
        CifarNotFoundError: no data at ``root``, a missing split file, or a failed download.
        CifarDataError: a corrupt or truncated archive or pickle, or wrong keys/shapes/labels.
            Each message names the offending file and the fix.
    """
    root = Path(root).expanduser()
    found = _locate(root)
    if found is None and download:
        _download(root if not root.name.endswith(".tar.gz") else root.parent)
        found = _locate(root)
    if found is None:
        raise CifarNotFoundError(
            f"no CIFAR-100 data at {root}: expected {root / FOLDER_NAME}/{{train,test,meta}} or "
            f"{root / ARCHIVE_NAME}. To fix it, {_fix_hint(root)}."
        )
    kind, path = found
    if kind == "folder":
        return _read_folder(path, source=f"folder {path.resolve()}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    folder, fresh = _cached_extraction(path, cache)
    verb = "extracted to" if fresh else "cached extraction in"
    return _read_folder(folder, source=f"archive {path.resolve()} {verb} {folder}")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def find_cifar100(
    candidates: list[str | os.PathLike[str]] | None = None,
) -> Path | None:
    """Finds a folder (or archive) with CIFAR-100 in the usual places.

    Args:
        candidates: paths to try in order. Default: ``$CONDATTN_DATA``, then ``./data`` and
            ``../shared/data`` relative to the working directory, then the same two relative to
            the repository root (the folder above the ``condattn`` package).

    Returns:
        The first candidate that holds the archive or the extracted folder (pass it to
        :func:`load_cifar100`), or None.
    """
    if candidates is None:
        candidates = []
        if os.environ.get("CONDATTN_DATA"):
            candidates.append(os.environ["CONDATTN_DATA"])
        for base in (Path.cwd(), _repo_root()):
            candidates += [base / "data", base.parent / "shared" / "data"]
    for cand in candidates:
        path = Path(cand).expanduser()
        found = _locate(path)
        if found is None:
            continue
        kind, where = found
        if kind == "archive" and not where.name.endswith(".tar.gz"):
            continue  # some unrelated file
        if kind == "folder" and not all((where / n).is_file() for n in _SPLIT_FILES):
            continue
        return path
    return None


def channel_stats(images: torch.Tensor, *, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and (population) std of uint8 images, in [0, 1] units.

    Args:
        images: uint8 tensor ``(N, C, H, W)``.
        chunk: images per step, which bounds the float64 scratch memory.

    Returns:
        ``(mean, std)``, each a tuple of C floats.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += x.square().sum(dim=(0, 2, 3)).cpu()
    count = images.numel() / c
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
