"""Small facts written once: atomic file writes, seed derivation and run provenance.

Private to condattn; every module that writes a file a user keeps, derives a seed from a run's
seed, or records what ran a job uses these, so the rules live in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_text",
    "cpu_name",
    "derive_seed",
    "git_sha",
    "logging_to",
    "package_version",
    "provenance",
]

# The source checkout this package runs from, if it runs from one (not an installed wheel).
REPO = Path(__file__).resolve().parents[1]


# --- atomic writes ----------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is renamed over ``path``.

    The rename (``os.replace``) is atomic on POSIX, so a reader or a crash sees either the old
    file or the new one, never a torn one. On an exception the temporary file is removed and
    ``path`` is left as it was. The suffix is kept so that writers that look at it (matplotlib's
    ``savefig``) pick the right format.

    Args:
        path: the final file; its folder is created if missing.
        fsync: flush the new file and its folder to disk (checkpoints, results).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if fsync and tmp.exists():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        _fsync_dir(path.parent)


def _atomic_write(
    path: str | os.PathLike[str], mode: str, write: Callable[[IO[Any]], None]
) -> Path:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    return _atomic_write(path, "w", lambda f: f.write(text))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_path`)."""
    import torch

    return _atomic_write(path, "wb", lambda f: torch.save(obj, f))


# --- seeds ------------------------------------------------------------------------------------


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``parts`` (e.g. an epoch and a stream).

    Independent of process, device and Python's hash seed, so every rank and every restart
    derives the same value.
    """
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


# --- provenance -------------------------------------------------------------------------------


def git_sha(repo: str | os.PathLike[str] = REPO) -> str | None:
    """The short SHA of ``repo``'s HEAD with ``+dirty`` for tracked changes; None without git,
    and None when ``repo`` is not the root of a git checkout (an installed package: the folder
    above it, e.g. site-packages, may lie inside some other repository)."""
    if not (Path(repo) / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def package_version() -> str:
    """condattn's ``__version__`` (the package is loaded: this module is part of it)."""
    from condattn import __version__

    return __version__


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: Any = "cpu", **extra: Any) -> dict[str, Any]:
    """What ran a job: device, torch version, threads, host, git SHA, time, plus ``extra``."""
    import torch

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_sha": git_sha(),  # None from an installed wheel: the version says what ran
        "condattn_version": package_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        **extra,
    }


@contextlib.contextmanager
def logging_to(handler: logging.Handler) -> Iterator[None]:
    """Sends the ``condattn`` loggers' INFO+ lines to ``handler`` inside the block (the console
    of a command, or a test's collector), then restores the logger."""
    root = logging.getLogger("condattn")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
