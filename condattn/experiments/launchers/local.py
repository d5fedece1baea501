"""The local launcher: this machine's CPU cores or GPUs, nothing to install.

- ``jobs=1`` and no GPU assignment: the runs train one after another in this process (as before).
- Otherwise each run trains in a child process (:mod:`condattn.experiments._worker`) that holds
  one *slot*: a share of the CPU cores (threads), and with ``gpus_per_run=G`` its own G GPUs
  (``CUDA_VISIBLE_DEVICES``), handed out round-robin over the visible ones; ``runs_per_gpu=K``
  packs K small runs onto each GPU. A run with G > 1 trains as G DDP processes (torchrun).

A killed launcher takes its children with it (``PR_SET_PDEATHSIG``; see ``_worker``), and a run
directory another live process trains (its lock is held) is waited for, never trained twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["LocalLauncher", "Slot", "plan_slots", "visible_gpus"]

logger = logging.getLogger(__name__)  # progress lines (INFO)

# How often a run locked by another process is checked again (seconds).
LOCK_POLL_S = 2.0


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else all CUDA
    devices torch sees (none without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if ids[:1] == ["-1"] else ids
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one run trains: its GPUs (empty: CPU only) and its CPU threads."""

    gpus: tuple[str, ...]
    threads: int

    def env(self, *, hide_gpus: bool) -> dict[str, str]:
        """The child's environment additions (``CUDA_VISIBLE_DEVICES`` when it has GPUs, or an
        empty one when GPUs must stay hidden from a CPU run)."""
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus)}
        return {"CUDA_VISIBLE_DEVICES": ""} if hide_gpus else {}


def plan_slots(
    *,
    jobs: int | None,
    gpus_per_run: int,
    runs_per_gpu: int,
    devices: Sequence[str],
    cores: int,
) -> list[Slot]:
    """The slots runs train in side by side.

    Args:
        jobs: at most this many runs at once (None: one per slot; without GPUs: 1).
        gpus_per_run: GPUs per run (0: no GPU assignment, CPU cores shared as ``cores // jobs``).
        runs_per_gpu: runs packed onto one GPU (only with ``gpus_per_run=1``).
        devices: the GPU ids to hand out (:func:`visible_gpus`).
        cores: CPU cores to share out as threads.

    Raises:
        ValueError: impossible requests, saying what would work.
    """
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if gpus_per_run < 0 or runs_per_gpu < 1:
        raise ValueError("--gpus-per-run must be >= 0 and --runs-per-gpu >= 1")
    if runs_per_gpu > 1 and gpus_per_run != 1:
        raise ValueError(
            "--runs-per-gpu K packs small runs onto one GPU: use it with --gpus-per-run 1"
        )
    if gpus_per_run == 0:
        n = jobs or 1
        return [Slot(gpus=(), threads=max(1, cores // n)) for _ in range(n)]
    groups = len(devices) // gpus_per_run
    if groups == 0:
        raise ValueError(
            f"--gpus-per-run {gpus_per_run} but {len(devices)} GPU(s) visible "
            f"({', '.join(devices) or 'none'}); ask for fewer, or drop --gpus-per-run to train "
            "on the CPU"
        )
    gpu_sets = [tuple(devices[g * gpus_per_run : (g + 1) * gpus_per_run]) for g in range(groups)]
    # Round-robin: slot i sits on GPU set i % groups, so the first runs spread over all GPUs.
    n = min(jobs or groups * runs_per_gpu, groups * runs_per_gpu)
    threads = max(1, cores // n)
    return [Slot(gpus=gpu_sets[i % groups], threads=threads) for i in range(n)]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class LocalLauncher:
    """Runs a grid on this machine (see the module docstring).

    Args:
        jobs: runs side by side (None: one per slot; 1 without GPUs trains in this process).
        gpus_per_run: GPUs of each run (0: none assigned).
        runs_per_gpu: runs packed onto each GPU.
        devices: the GPUs to hand out (default :func:`visible_gpus`; tests pass a fake list).
    """

    name = "local"

    def __init__(
        self,
        jobs: int | None = 1,
        gpus_per_run: int = 0,
        runs_per_gpu: int = 1,
        devices: Sequence[str] | None = None,
    ) -> None:
        devs = list(devices) if devices is not None else (visible_gpus() if gpus_per_run else [])
        self.gpus_per_run = gpus_per_run
        self.slots = plan_slots(
            jobs=jobs,
            gpus_per_run=gpus_per_run,
            runs_per_gpu=runs_per_gpu,
            devices=devs,
            cores=_cores(),
        )
        self.in_process = len(self.slots) == 1 and not gpus_per_run

    @property
    def threads(self) -> int:
        """Threads of each run (the grid writes it into ``system.threads``)."""
        return self.slots[0].threads

    def launch(
        self,
        runs: Sequence[Any],
        *,
        states: Mapping[str, str],
        synthetic: bool,
        data_root: str | None,
        data: Any,
    ) -> dict[str, Any]:
        """Trains ``runs`` (waiting first for any another process holds); each run's status."""
        from condattn.experiments import grid
        from condattn.experiments.launchers import RunStatus, child_pythonpath

        free: queue.Queue = queue.Queue()
        for slot in self.slots:
            free.put(slot)
        statuses: dict[str, RunStatus] = {}
        lock = threading.Lock()

        def one(i: int, run: Any) -> None:
            state = states[run.label]
            if state == "running":
                state, run = _wait_for_holder(run)
            if state == "done":
                statuses[run.label] = RunStatus(run.label, "done", "trained by another process")
                return
            resume = state == "resume"
            logger.info(
                f"[{i}/{len(runs)}] {'resume' if resume else 'train'} {run.label} -> {run.run_dir}"
            )
            log_path = grid.log_path_for(run)
            t0 = time.perf_counter()
            if self.in_process:
                err = grid._train_in_process(run, resume=resume, data=data, log_path=log_path)
            else:
                slot = free.get()
                try:
                    env = {**slot.env(hide_gpus=bool(visible_gpus()) and not self.gpus_per_run)}
                    env["PYTHONPATH"] = child_pythonpath()
                    err = grid._train_in_child(
                        run,
                        resume=resume,
                        synthetic=synthetic,
                        data_root=data_root,
                        log_path=log_path,
                        env_extra=env,
                        nproc=max(1, len(slot.gpus)),
                    )
                finally:
                    free.put(slot)
            with lock:
                if err:
                    statuses[run.label] = RunStatus(run.label, "failed", err)
                    logger.info(err)
                else:
                    statuses[run.label] = RunStatus(run.label, "done")
                    took = time.perf_counter() - t0
                    logger.info(f"[{i}/{len(runs)}] {run.label} finished in {took:.0f} s")

        if self.in_process:
            for i, run in enumerate(runs, 1):
                one(i, run)
        else:
            threads = [
                threading.Thread(target=one, args=(i, run), daemon=True)
                for i, run in enumerate(runs, 1)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return statuses


def _wait_for_holder(run: Any) -> tuple[str, Any]:
    """Waits until no other process holds ``run``'s lock; its state then (and the run, with the
    thread count of its checkpoint when it is to be resumed)."""
    from condattn.experiments import grid
    from condattn.train.lock import holder, is_locked

    who = holder(run.run_dir) or {}
    logger.info(
        f"{run.label} is running in pid {who.get('pid', '?')} on {who.get('host', '?')} "
        "(its lock is held); waiting for it instead of training it twice"
    )
    while is_locked(run.run_dir):
        time.sleep(LOCK_POLL_S)
    state = grid.run_state(run)
    if state == "resume":
        run = grid._saved_threads(run)
    return state, run
