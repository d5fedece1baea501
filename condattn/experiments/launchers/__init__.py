"""How a grid's runs execute: one small interface, several engines.

A launcher gets the runs a grid still lacks (each a pure, resumable, idempotent
:func:`condattn.train.train` of one run directory), executes them, and reports each run's
state as a :class:`RunStatus`: ``queued``, ``running``, ``done`` or ``failed`` (with its log).
The grid (:func:`condattn.experiments.run_grid`) never knows which launcher runs it:

- ``local`` (:class:`LocalLauncher`, the default, nothing to install): this process, or a pool of
  child processes with their own CPU cores or GPUs (``CUDA_VISIBLE_DEVICES`` per child).
- ``slurm`` (:class:`~condattn.experiments.launchers.slurm.SlurmLauncher`, ``pip install
  'condattn[slurm]'``): one submitit array job per grid, one task per run, requeued on time
  limits and preemption and resumed from the run's ``checkpoint.pt``.

Both execute the same function, :func:`train_spec`, on the same JSON-able spec of a run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from condattn.experiments.launchers.local import LocalLauncher, plan_slots, visible_gpus

__all__ = [
    "LAUNCHERS",
    "GridPending",
    "Launcher",
    "LocalLauncher",
    "RunStatus",
    "make_launcher",
    "plan_slots",
    "prints_own_dry_run",
    "run_spec",
    "train_spec",
    "visible_gpus",
]

LAUNCHERS = ("local", "slurm")


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """Where one run stands: ``queued``, ``running``, ``done`` or ``failed``.

    ``detail`` says more: the failure line with its log path, or the SLURM job id.
    """

    label: str
    state: str
    detail: str = ""


class GridPending(Exception):
    """Runs are still queued or running; run the same command again to collect them."""

    def __init__(self, statuses: Mapping[str, RunStatus]) -> None:
        self.statuses = dict(statuses)
        counts: dict[str, int] = {}
        for s in self.statuses.values():
            counts[s.state] = counts.get(s.state, 0) + 1
        lines = [
            f"  {s.label}: {s.state}{f' ({s.detail})' if s.detail else ''}"
            for s in self.statuses.values()
        ]
        super().__init__(
            "not finished: "
            + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            + "; run the same command again to see their states and, once all are done, "
            "collect the summary\n" + "\n".join(lines)
        )


class Launcher(Protocol):
    """What :func:`condattn.experiments.run_grid` needs from a launcher."""

    name: str

    def launch(
        self,
        runs: Sequence[Any],
        *,
        states: Mapping[str, str],
        synthetic: bool,
        data_root: str | None,
        data: Any,
    ) -> dict[str, RunStatus]:
        """Executes (or checks on) ``runs``; returns each one's :class:`RunStatus` by label.

        ``states`` holds each run's state before this call (``new``, ``resume``, ``restart``,
        ``running``); ``data`` is the grid's data, loaded once (launchers that run elsewhere
        reload it from ``synthetic``/``data_root``).
        """
        ...


def run_spec(run: Any, *, resume: bool, synthetic: bool, data_root: str | None) -> dict:
    """The JSON-able description of one run that :func:`train_spec` trains."""
    return {
        "config": run.cfg.to_dict(),
        "run_dir": str(run.run_dir),
        "resume": resume,
        "synthetic": synthetic,
        "data": data_root,
    }


def train_spec(spec: Mapping[str, Any], *, lock_wait_s: float = 0.0) -> dict[str, Any]:
    """Trains the run of ``spec`` (from :func:`run_spec`): loads its data, trains, returns results.

    Resumes when the run directory holds a checkpoint, whatever ``spec["resume"]`` says, so that a
    requeued or restarted task continues where the killed one stopped. Under torchrun or a
    multi-task SLURM job every rank calls this; the process group is torn down at the end.
    """
    from condattn.train import config_from_dict, train
    from condattn.train import distributed as D
    from condattn.train.build import load_data

    cfg = config_from_dict(spec["config"])
    run_dir = Path(spec["run_dir"])
    resume = bool(spec.get("resume")) or (run_dir / "checkpoint.pt").is_file()
    data = load_data(cfg, root=spec.get("data"), synthetic=bool(spec.get("synthetic")))
    try:
        return train(cfg, data=data, run_dir=run_dir, resume=resume, lock_wait_s=lock_wait_s)
    finally:
        D.cleanup()


def prints_own_dry_run(launcher: Any) -> bool:
    """Whether ``launcher`` was asked for a dry run that it prints itself (SLURM's array job);
    the local launcher has none, and the grid prints its plan instead."""
    return bool(getattr(getattr(launcher, "options", None), "dry_run", False))


def make_launcher(name: str, **options: Any) -> Launcher:
    """The launcher called ``name`` (``local`` or ``slurm``) built from its options.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    if name == "local":
        keys = ("jobs", "gpus_per_run", "runs_per_gpu")
        return LocalLauncher(**{k: v for k, v in options.items() if k in keys and v is not None})
    if name == "slurm":
        from condattn.experiments.launchers.slurm import SlurmLauncher, SlurmOptions

        return SlurmLauncher(SlurmOptions.from_options(options))
    raise ValueError(f"unknown launcher {name!r}; valid: {', '.join(LAUNCHERS)}")


def package_root() -> str:
    """The directory holding the ``condattn`` package that runs now (for jobs' PYTHONPATH)."""
    return str(Path(__file__).resolve().parents[3])


def child_pythonpath() -> str:
    """``PYTHONPATH`` for processes that must import this same condattn (not another install)."""
    old = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([package_root(), *(p for p in old if p != package_root())])
