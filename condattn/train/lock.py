"""One writer per run directory: an OS lock that dies with its process.

:func:`condattn.train.train` holds :class:`RunLock` on ``RUN_DIR/.lock`` (``fcntl.flock``,
exclusive) from before it reads the checkpoint until it returns. The kernel releases the lock when
the holding process exits, however it exits (``kill -9`` included), so a lock is never stale: a
locked directory is being trained right now by a live process, and anything else that would train
it (``train --resume``, ``compare``, a requeued SLURM task) reports it as running instead of
training it a second time.

The lock file also records who holds it (pid, host, start time) for the messages; its content is
informational, only the ``flock`` counts. ``flock`` works on local file systems and, on Linux, on
NFS (emulated with byte-range locks); on a shared file system that supports neither, the lock
cannot protect a run directory.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "holder", "is_locked"]

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the lock is then a no-op
    fcntl = None  # type: ignore[assignment]


class RunLockedError(ValueError):
    """The run directory is being trained by another live process (a ValueError, so that the CLI
    prints it as one line, like the other refusals)."""


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} (since {since})"


def holder(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the lock file says about its holder (pid, host, since), or None if unreadable."""
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text() or "null")
    except (OSError, ValueError):
        return None


def is_locked(run_dir: str | os.PathLike[str]) -> bool:
    """True when a live process holds the run directory's lock (checked by trying to take it)."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock of one run directory; a context manager.

    Args:
        run_dir: the run directory (created if missing).
        wait_s: how long to wait for a holder to let go (0: fail at once). A requeued SLURM task
            waits a little, in case its predecessor is still exiting.

    Raises:
        RunLockedError: (on enter) another live process holds it; the message names it.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, wait_s: float = 0.0) -> None:
        self.run_dir = Path(run_dir)
        self.wait_s = wait_s
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock (see the class docstring)."""
        if fcntl is None:  # pragma: no cover
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunLockedError(
                        f"{self.run_dir} is being trained by {_describe(holder(self.run_dir))}; "
                        "wait for it to finish (or stop that process), then run this again"
                    ) from None
                time.sleep(0.2)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Lets go (the file stays; only the flock counts)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
