"""Where decoded and extracted data are cached, and cleanup of folders a failed step created."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["default_cache_dir", "removing_new_dirs"]


def default_cache_dir() -> Path:
    """``$CONDATTN_CACHE`` if set, else ``~/.cache/condattn``.

    The data themselves may live on a read-only disk, so nothing is ever written next to them.
    """
    env = os.environ.get("CONDATTN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "condattn"


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing[::-1]


@contextlib.contextmanager
def removing_new_dirs(path: Path) -> Iterator[None]:
    """Creates ``path`` (with parents); if the body raises, removes the folders created here
    again, innermost first, as far as they are empty, so a failed extraction or decoding leaves
    no empty cache folders behind."""
    created = _missing_dirs(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:
                break  # not empty (someone else's files) or already gone
        raise
