"""Threads on a shared machine: :class:`ThreadGovernor` fits torch's thread count, while a run
goes, to the cores that other processes leave free (the plan's ``adapt_threads``,
:func:`condattn.train.speed.decide`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from condattn.train.speed import read_text

__all__ = ["ThreadGovernor", "threads_for_free_cores"]


def threads_for_free_cores(others: float, *, cores: int, limit: int) -> int:
    """Threads for ``cores`` CPUs of which other processes keep ``others`` busy (in cores).

    A core counts as taken once others use more than a quarter of one: a thread that shares a
    core with a busy process makes every parallel region wait for it, and on a 2-core VM two
    threads beside one busy process ran 20-40x slower than one thread (docs/results.md, Speed).
    """
    taken = max(0, math.ceil(others - 0.25))
    return max(1, min(limit, cores - taken))


def _busy_seconds(stat: str, cpus: Sequence[int]) -> float:
    """CPU seconds spent busy (user, nice, system, irq, softirq) on ``cpus``, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    for line in stat.splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            user, nice, system, _idle, _iowait, irq, softirq = map(int, parts[1:8])
            total += user + nice + system + irq + softirq
    return total / tick


class ThreadGovernor:
    """Fits torch's thread count to the cores other processes leave free, while a run goes.

    Every ``every_s`` seconds of stepping, :meth:`poll` compares how busy this process's CPUs
    were (``/proc/stat``) with this process's own CPU time: the rest is other processes' load.
    The thread count becomes :func:`threads_for_free_cores` (between 1 and ``limit``) once two
    measurements in a row agree. The first poll only starts the clock (start-up work is not
    stepping), and so does a poll after a gap of over ``3 * every_s`` (the run was evaluating or
    idle) or after a step of at least 0.5 s in which this process used under a quarter of a core (it
    was waiting, e.g. for another job that shares its turns; the others' load then says nothing
    about its own steps). A verdict waiting for its second measurement survives such gaps.

    Args:
        limit: the most threads (the plan's count).
        cpus: the CPUs this process may run on.
        every_s: seconds between measurements.
        read_stat: returns the text of ``/proc/stat`` (tests pass a fake).
        cpu_time: this process's CPU seconds, all threads (``time.process_time``).
        clock: a monotonic clock in seconds.
        set_threads: applies a count (``torch.set_num_threads``).
    """

    def __init__(
        self,
        limit: int,
        *,
        cpus: Sequence[int],
        every_s: float = 2.0,
        read_stat=None,
        cpu_time=time.process_time,
        clock=time.monotonic,
        set_threads=None,
    ) -> None:
        self.limit, self.cpus, self.every_s = limit, tuple(cpus), every_s
        self.min_own_cores = 0.25  # a stepping process keeps at least a quarter of a core busy
        self._read_stat = read_stat or (lambda: read_text(Path("/proc/stat")) or "")
        self._cpu_time, self._clock = cpu_time, clock
        self._set = set_threads or _torch_set_threads
        self.threads = limit
        self.changes: list[dict[str, float]] = []  # what changed when (for the run's log)
        self._pending: int | None = None
        self._t: float | None = None  # no window yet: the first poll starts one
        self._last: tuple[float, float] | None = None  # (clock, own CPU time) at the last poll

    def _mark(self) -> None:
        self._t = self._clock()
        self._busy = _busy_seconds(self._read_stat(), self.cpus)
        self._ours = self._cpu_time()

    def poll(self) -> int | None:
        """Call after every step; returns the new thread count when it changed, else None."""
        now, cpu = self._clock(), self._cpu_time()
        last, self._last = self._last, (now, cpu)
        if self._t is None:
            self._mark()
            return None
        waited = last is not None and now - last[0] >= 0.5
        if waited and (cpu - last[1]) / (now - last[0]) < self.min_own_cores:
            self._mark()  # this process waited since the last step: a fresh window
            return None
        wall = now - self._t
        if wall < self.every_s:
            return None
        busy0, ours0 = self._busy, self._ours
        self._mark()
        if wall > 3 * self.every_s:  # not stepping in between: start a fresh window
            return None
        others = max(0.0, (self._busy - busy0) - (self._ours - ours0)) / wall
        target = threads_for_free_cores(others, cores=len(self.cpus), limit=self.limit)
        if target == self.threads or target != self._pending:
            self._pending = None if target == self.threads else target
            return None
        self._pending = None
        self.changes.append({"time": now, "others_cores": round(others, 2), "threads": target})
        self.threads = target
        self._set(target)
        return target


def _torch_set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
