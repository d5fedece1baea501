"""The CIFAR archive (``cifar-*-python.tar.gz``): checked, safe extraction into a cache.

Part of :mod:`condattn.data.cifar`: only the split files are written, to paths chosen here (no
member can escape the cache), into a temporary folder renamed into place atomically; the gzip
stream is read to its end, so its CRC check covers every byte.
"""

from __future__ import annotations

import gzip
import hashlib
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

from condattn.data._cache import removing_new_dirs
from condattn.data.container import DataError

# ``spec`` below is a condattn.data.cifar.CifarSpec (its folder, files, archive name, md5, ...);
# typed as Any so that this module does not import the one that imports it.
CifarSpec = Any

__all__ = ["REFETCH", "cached_extraction", "complete", "extract_archive"]

REFETCH = "delete it and download or copy it again"


def complete(spec: CifarSpec, folder: Path) -> bool:
    return all((folder / name).is_file() for name in spec.files)


def _archive_key(spec: CifarSpec, archive: Path) -> str:
    # Size + mtime identify the archive without hashing 170 MB on every start; a replaced or
    # re-downloaded archive gets a new key and is extracted again.
    st = archive.stat()
    digest = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{spec.name}-{st.st_size}-{digest}"


def _member_target(spec: CifarSpec, name: str) -> str | None:
    """Maps an archive member name to one of the split files, or None to skip it."""
    parts = posixpath.normpath(name.lstrip("/")).split("/")
    if len(parts) == 2 and parts[0] == spec.folder and parts[1] in spec.files:
        return parts[1]
    return None


def _extract_members(spec: CifarSpec, archive: Path, tmp: Path) -> set[str]:
    """Writes the split files of ``archive`` into ``tmp``; returns the names found.

    The gzip stream is read to its end, where gzip checks the CRC-32 and length of everything
    it decompressed, so bad bytes anywhere in the archive raise here.
    """
    found = set()
    with gzip.open(archive, "rb") as gz:
        with tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                target = _member_target(spec, member.name)
                if target is None or not member.isfile():
                    continue
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has a stream
                with src, open(tmp / target, "wb") as out:
                    shutil.copyfileobj(src, out, length=1 << 20)
                found.add(target)
        while gz.read(1 << 20):  # drain: the CRC-32 check happens at the end of the stream
            pass
    return found


def extract_archive(spec: CifarSpec, archive: Path, dest: Path) -> None:
    """Safely extracts the split files from ``archive`` into ``dest``.

    Only regular files named ``<folder>/<split file>`` are written, to paths this function
    chooses, so no member can escape ``dest`` (no path traversal, links or devices). The files
    land in a temporary folder that is renamed into place atomically.
    """
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        try:
            found = _extract_members(spec, archive, tmp)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise DataError(
                f"{archive} is corrupt ({type(err).__name__}: {err}); {REFETCH} (md5 of the "
                f"official {spec.archive}: {spec.md5})."
            ) from err
        missing = [name for name in spec.files if name not in found]
        if missing:
            raise DataError(
                f"the archive {archive} is a valid tar.gz but has no "
                f"{', '.join(f'{spec.folder}/{m}' for m in missing)}: it is not the "
                f"{spec.title} python version ({spec.archive} from {spec.url})."
            )
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # another process may have won the race; keep its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_extraction(spec: CifarSpec, archive: Path, cache_dir: Path) -> tuple[Path, bool]:
    """Returns the extracted folder for ``archive`` and whether it was extracted just now."""
    dest = cache_dir / _archive_key(spec, archive) / spec.folder
    if complete(spec, dest):
        return dest, False
    try:
        with removing_new_dirs(dest.parent):
            if dest.exists():  # a partial leftover (should not happen with the atomic rename)
                shutil.rmtree(dest)
            extract_archive(spec, archive, dest)
    except OSError as err:
        raise DataError(
            f"cannot write the extraction cache {dest.parent} for {archive} ({err}); pass a "
            "writable cache_dir (or set $CONDATTN_CACHE), or extract the archive yourself and "
            f"pass the {spec.folder}/ folder."
        ) from err
    return dest, True
