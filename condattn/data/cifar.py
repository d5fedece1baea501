"""CIFAR-100 and CIFAR-10 readers: the official "python version" pickles -> uint8 tensors.

The reader accepts the extracted folder (``cifar-100-python/`` or ``cifar-10-batches-py/``), a
folder that holds it, the ``.tar.gz`` archive, or a folder that holds the archive. An archive is
extracted once into a cache folder (never next to the archive, which may be read-only) and
re-used. The whole gzip stream is read, so its CRC-32 catches a corrupted archive (bad bytes, not
only a truncated file); such an archive is reported as corrupt, with the fix.

The pickles are read here rather than through ``torchvision.datasets.CIFAR100``, because that class
checks the md5 of ``train``/``test`` and rejects copies whose in-file order differs from the
official one (see ``shared/data/README.md``). Nothing here depends on the in-file order.
"""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from condattn.data._cache import default_cache_dir
from condattn.data.cifar_archive import REFETCH as _REFETCH
from condattn.data.cifar_archive import cached_extraction as _cached_extraction
from condattn.data.cifar_archive import complete as _complete
from condattn.data.container import (
    CifarData,
    CifarDataError,
    CifarNotFoundError,
    DataError,
    DataNotFoundError,
    ImageData,
    channel_stats,
)

__all__ = [
    "ARCHIVE_NAME",
    "CIFAR10",
    "CIFAR100",
    "CIFAR100_MD5",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR100_URL",
    "FOLDER_NAME",
    "CifarData",
    "CifarDataError",
    "CifarNotFoundError",
    "CifarSpec",
    "channel_stats",
    "find_cifar",
    "find_cifar10",
    "find_cifar100",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
]


@dataclass(frozen=True)
class CifarSpec:
    """The file layout of one CIFAR release ("python version")."""

    name: str  # the dataset's name in condattn.data.DATASETS
    title: str  # for messages
    archive: str
    folder: str
    url: str
    md5: str  # of the official archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the folder must hold."""
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    archive="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
)
CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    archive="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{k}" for k in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
)

# The CIFAR-100 names from before CIFAR-10 was added.
ARCHIVE_NAME, FOLDER_NAME = CIFAR100.archive, CIFAR100.folder
CIFAR100_URL, CIFAR100_MD5 = CIFAR100.url, CIFAR100.md5

# Per-channel mean/std of the 50,000 training images, in [0, 1] units (shared/data/README.md);
# ImageData computes the same numbers from the train split.
CIFAR100_MEAN = (0.507075, 0.486549, 0.440918)
CIFAR100_STD = (0.267334, 0.256438, 0.276150)

_IMAGE_BYTES = 3 * 32 * 32
_FIX = (
    "put {archive} (or the extracted {folder}/ folder) in {where}, or pass download=True "
    "(--download on the command line) where there is network access"
)


def _fix_hint(spec: CifarSpec, where: Path | str) -> str:
    return _FIX.format(archive=spec.archive, folder=spec.folder, where=where)


def _has_split_files(spec: CifarSpec, folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in spec.files)


def _locate(spec: CifarSpec, root: Path) -> tuple[str, Path] | None:
    """Returns ``("folder", dir)`` or ``("archive", file)`` for ``root``, or None."""
    if root.is_file():
        if root.name in spec.files:  # e.g. .../cifar-100-python/train
            return "folder", root.parent
        return "archive", root
    if not root.is_dir():
        return None
    folder = None
    if (root / spec.folder).is_dir():
        folder = root / spec.folder
    elif root.name == spec.folder or _has_split_files(spec, root):
        folder = root
    if not (folder is not None and _complete(spec, folder)) and (root / spec.archive).is_file():
        return "archive", root / spec.archive  # an incomplete extraction next to the archive
    return ("folder", folder) if folder is not None else None


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


def _read_pickle(path: Path, title: str) -> dict[str, object]:
    """Reads one pickled dict; DataError (naming ``path``) when it is missing or unusable."""
    if not path.is_file():
        raise DataNotFoundError(f"missing {title} file {path}")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as err:  # pickle raises many types on bad input
        raise DataError(
            f"cannot unpickle {path}: {type(err).__name__}: {err} (truncated or corrupt)"
        ) from err
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _require(d: dict[str, object], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{path} lacks the key(s) {missing} (has {sorted(d)})")


def _decode_names(names: object, path: Path, key: str) -> list[str]:
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: {key!r} must be a non-empty list of names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _read_batch(spec: CifarSpec, path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 ``N x 3072``, int64 ``N``), checked."""
    d = _read_pickle(path, spec.title)
    _require(d, ("data", spec.label_key), path)
    data = d["data"]
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8).reshape(-1, _IMAGE_BYTES)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(
            f"{path}: 'data' must be a uint8 array N x {_IMAGE_BYTES}, got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        )
    n = data.shape[0]
    if data.shape[1] != _IMAGE_BYTES or n == 0:
        raise DataError(
            f"{path}: 'data' has shape {tuple(data.shape)}, expected (N, {_IMAGE_BYTES}) with "
            f"N > 0 (3 x 32 x 32 bytes per image)"
        )
    labels = np.asarray(d[spec.label_key])
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {spec.label_key!r} must be {n} integers (one per image), got shape "
            f"{labels.shape} dtype {labels.dtype}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"{path}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    return data, labels.astype(np.int64)


def _read_split(
    spec: CifarSpec, folder: Path, files: tuple[str, ...], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batches = [_read_batch(spec, folder / name, num_classes) for name in files]
    data = np.concatenate([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
    labels = np.concatenate([b[1] for b in batches])
    images = torch.from_numpy(np.array(data, dtype=np.uint8, order="C", copy=True))
    return images.view(-1, 3, 32, 32), torch.from_numpy(labels)


def _read_folder(spec: CifarSpec, folder: Path, *, source: str) -> ImageData:
    """Reads a complete extracted folder; raises DataError naming the bad file."""
    meta_path = folder / spec.meta_file
    meta = _read_pickle(meta_path, spec.title)
    _require(meta, (spec.names_key,), meta_path)
    classes = _decode_names(meta[spec.names_key], meta_path, spec.names_key)
    train_x, train_y = _read_split(spec, folder, spec.train_files, len(classes))
    test_x, test_y = _read_split(spec, folder, spec.test_files, len(classes))
    return ImageData(train_x, train_y, test_x, test_y, classes, source)


def _read_user_folder(spec: CifarSpec, folder: Path) -> ImageData:
    try:
        return _read_folder(spec, folder, source=f"folder {folder.resolve()}")
    except DataNotFoundError as err:
        raise DataNotFoundError(f"{err}; {_fix_hint(spec, folder.parent)}.") from err
    except DataError as err:
        raise DataError(
            f"{err}. The file is corrupt or not from the {spec.title} python "
            f"version; {_REFETCH} (or replace the {spec.folder}/ folder with a fresh copy)."
        ) from err


def _read_archive(spec: CifarSpec, archive: Path, cache: Path) -> ImageData:
    folder, fresh = _cached_extraction(spec, archive, cache)
    verb = "extracted to" if fresh else "cached extraction in"
    try:
        return _read_folder(spec, folder, source=f"archive {archive.resolve()} {verb} {folder}")
    except DataError as err:
        # The extraction holds exactly what the archive holds (its CRC was checked), so a bad
        # file in it means a bad archive. Drop the extraction: the next run extracts again.
        shutil.rmtree(folder.parent, ignore_errors=True)
        detail = str(err).replace(str(folder), spec.folder)  # the member, not the cache path
        raise DataError(f"{archive} is corrupt ({detail}); {_REFETCH}.") from err


def _download(spec: CifarSpec, root: Path) -> None:
    from urllib.error import URLError

    from torchvision.datasets import utils as tv_utils  # looked up at call time: tests patch it

    try:
        root.mkdir(parents=True, exist_ok=True)
        tv_utils.download_and_extract_archive(
            spec.url, download_root=str(root), filename=spec.archive, md5=spec.md5
        )
    except (URLError, OSError, RuntimeError) as err:
        raise DataNotFoundError(
            f"could not download {spec.url} into {root} ({type(err).__name__}: {err}). "
            f"There is probably no network access (or {root} is not writable). Fetch "
            f"{spec.archive} elsewhere and put it (or the extracted {spec.folder}/ folder) in "
            f"{root}, then run again without download."
        ) from err


def load_cifar(
    spec: CifarSpec,
    root: str | os.PathLike[str],
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> ImageData:
    """Loads a CIFAR release (``CIFAR100`` or ``CIFAR10``) as uint8 tensors.

    Args:
        spec: :data:`CIFAR100` or :data:`CIFAR10`.
        root: one of: a folder holding the extracted folder (e.g. ``cifar-100-python/``); that
            folder itself; a folder holding the ``.tar.gz`` archive; or the archive path itself.
            It may be read-only.
        download: fetch the official archive into ``root`` when no data is found there (uses
            ``torchvision.datasets.utils.download_and_extract_archive``; needs network access).
            Skipped when the files are already there.
        cache_dir: where archives are extracted, once per archive (keyed by its size and
            mtime). Defaults to ``$CONDATTN_CACHE`` or ``~/.cache/condattn``.

    Returns:
        The train and test splits in the files' own order, the class names (CIFAR-100: the fine
        labels), the train split's mean/std and a ``source`` string saying where they came from.

    Raises:
        DataNotFoundError: ``root`` missing or holding no data, a missing split file, or a failed
            download.
        DataError: a corrupt or truncated archive or pickle, or wrong keys/shapes/labels. Each
            message names the offending file and the fix.
    """
    root = Path(root).expanduser()
    if not root.exists() and not download:
        raise DataNotFoundError(
            f"{root} does not exist: no {spec.title} data there. To fix it, "
            f"{_fix_hint(spec, root)}."
        )
    found = _locate(spec, root)
    if found is None and download:
        _download(spec, root if not root.name.endswith(".tar.gz") else root.parent)
        found = _locate(spec, root)
    if found is None:
        raise DataNotFoundError(
            f"no {spec.title} data at {root}: expected {root / spec.folder}/"
            f"{{{','.join(spec.files)}}} or {root / spec.archive}. To fix it, "
            f"{_fix_hint(spec, root)}."
        )
    kind, path = found
    if kind == "folder":
        return _read_user_folder(spec, path)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _read_archive(spec, path, cache)


def load_cifar100(
    root: str | os.PathLike[str],
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> ImageData:
    """Loads CIFAR-100 (fine labels): :func:`load_cifar` with :data:`CIFAR100`."""
    return load_cifar(CIFAR100, root, download=download, cache_dir=cache_dir)


def load_cifar10(
    root: str | os.PathLike[str],
    *,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> ImageData:
    """Loads CIFAR-10 (``data_batch_1..5`` as train): :func:`load_cifar` with :data:`CIFAR10`."""
    return load_cifar(CIFAR10, root, download=download, cache_dir=cache_dir)


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def data_env_path() -> Path | None:
    """``$CONDATTN_DATA`` as a path (None when unset); a path that does not exist is an error.

    Raises:
        DataNotFoundError: ``$CONDATTN_DATA`` is set but names nothing. It is never skipped in
            favour of another folder: a typo must not silently train on other data.
    """
    env = os.environ.get("CONDATTN_DATA")
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.exists():
        raise DataNotFoundError(
            f"$CONDATTN_DATA={env} does not exist; fix or unset it (it is never skipped in "
            "favour of another folder)."
        )
    return path


def find_cifar(
    spec: CifarSpec, candidates: list[str | os.PathLike[str]] | None = None
) -> Path | None:
    """Finds a folder (or archive) with a CIFAR release in the usual places.

    Args:
        spec: :data:`CIFAR100` or :data:`CIFAR10`.
        candidates: paths to try in order. Default: ``$CONDATTN_DATA`` when it is set, and then
            it is the ONLY place (returned whatever it holds, so that loading it says what is
            missing there); else ``./data`` and ``../shared/data`` relative to the working
            directory, then the same two relative to the repository root.

    Returns:
        The first candidate that holds the archive or the complete extracted folder (pass it to
        :func:`load_cifar`), or None.

    Raises:
        DataNotFoundError: ``$CONDATTN_DATA`` names a path that does not exist.
    """
    if candidates is None:
        env = data_env_path()
        if env is not None:
            return env
        candidates = []
        for base in (Path.cwd(), _repo_root()):
            candidates += [base / "data", base.parent / "shared" / "data"]
    for cand in candidates:
        path = Path(cand).expanduser()
        found = _locate(spec, path)
        if found is None:
            continue
        kind, where = found
        if kind == "archive" and not where.name.endswith(".tar.gz"):
            continue  # some unrelated file
        if kind == "folder" and not _complete(spec, where):
            continue
        return path
    return None


def find_cifar100(candidates: list[str | os.PathLike[str]] | None = None) -> Path | None:
    """:func:`find_cifar` for CIFAR-100."""
    return find_cifar(CIFAR100, candidates)


def find_cifar10(candidates: list[str | os.PathLike[str]] | None = None) -> Path | None:
    """:func:`find_cifar` for CIFAR-10."""
    return find_cifar(CIFAR10, candidates)
