"""A grid of ordinary training runs (variants x seeds), reused and resumed, then summarised.

``compare`` sits on top of :func:`condattn.train.train` and never inside it. Every cell of the
grid is a normal run directory ``OUT/<variant>/seed<k>/`` (see :mod:`condattn.train.loop`), made
from the recipe with ``--set model.variant=<variant> system.seed=<k>``. Because the data order,
the augmentation and the backbone init depend only on ``system.seed`` (the loader seeds from
``(seed, epoch)``; the model is built from ``torch.manual_seed(seed)`` before the heads are
added), the variants of one seed see exactly the same data, which is what lets
:mod:`condattn.experiments.stats` pair them.

Each run directory is in one of the four states of :mod:`condattn.train.rundir`, decided
before anything trains (the grid's words for them, :class:`~condattn.train.rundir.RunState`):

- ``new``: nothing there; train it.
- ``done``: ``results.json`` present; reuse it (a second identical call trains nothing).
- ``resume``: ``checkpoint.pt`` but no results (killed); continue it with ``resume=True``.
- ``restart``: started but killed before its first checkpoint; train it from scratch.
- ``running``: a live process holds the directory's lock (:mod:`condattn.train.lock`); it is never
  trained a second time. The local launcher waits for it, then reuses or resumes it.

How the runs execute is the launcher's business (:mod:`condattn.experiments.launchers`: ``local``
processes or a ``slurm`` array job); the grid never knows which one runs it.

A run directory whose ``config.json`` differs from what the grid asks (other than in the keys
:data:`condattn.train.rundir.MAY_DIFFER` allows for reuse) is an error that names it and the
differing keys: reusing it silently would compare something else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from condattn.train import TrainConfig, load_recipe
from condattn.train.config import VARIANTS
from condattn.train.lock import is_locked
from condattn.train.rundir import RunState, saved_config
from condattn.train.rundir import config_diff as _diff
from condattn.train.rundir import run_state as _state_of
from condattn.train.variants import named_variants, variant_overrides

__all__ = [
    "CompareError",
    "GridRun",
    "config_diff",
    "log_path_for",
    "parse_seeds",
    "parse_variants",
    "plan_grid",
    "plan_lines",
    "run_dir_for",
    "run_grid",
    "run_state",
]

logger = logging.getLogger(__name__)  # progress lines (INFO)

# Override keys the grid sets itself; the user chooses them with --variants and --seeds.
_GRID_KEYS = {
    "model.variant": "--variants",
    "variant": "--variants",
    "system.seed": "--seeds",
    "seed": "--seeds",
}


class CompareError(ValueError):
    """A comparison cannot go on (bad grid, a run directory that does not match, a failed run)."""


def parse_variants(text: str, recipe: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """``"se,se_a,se_r"`` -> ``("se", "se_a", "se_r")``; unknown or repeated names are refused.

    Besides the built-in variants, the names of ``recipe``'s ``[variants.NAME]`` tables are valid
    (:mod:`condattn.train.variants`).
    """
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    valid = [*VARIANTS, *(named_variants(recipe) if recipe is not None else {})]
    bad = [v for v in names if v not in valid]
    if bad or not names:
        raise CompareError(
            f"--variants: unknown variant(s) {', '.join(map(repr, bad)) or repr(text)}; "
            f"valid: {', '.join(valid)} (comma-separated, e.g. se,se_a,se_r; a recipe names "
            "more with [variants.NAME] tables)"
        )
    if len(set(names)) != len(names):
        raise CompareError(f"--variants: {text!r} names a variant twice")
    return names


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; anything but distinct non-negative integers is refused."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    try:
        seeds = tuple(int(s) for s in items)
    except ValueError:
        seeds = ()
    if not seeds or any(s < 0 for s in seeds):
        raise CompareError(
            f"--seeds must be comma-separated non-negative integers (e.g. 0,1,2), got {text!r}"
        )
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds: {text!r} names a seed twice")
    return seeds


def run_dir_for(out_dir: str | os.PathLike[str], variant: str, seed: int) -> Path:
    """Where the grid keeps the run of ``variant`` with ``seed``: ``OUT/<variant>/seed<k>``."""
    return Path(out_dir) / variant / f"seed{seed}"


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One cell of the grid: a variant, a seed, the resolved config and its run directory."""

    variant: str
    seed: int
    cfg: TrainConfig
    run_dir: Path

    @property
    def label(self) -> str:
        """``<variant>/seed<k>`` for a compare grid (``<recipe>/seed<k>`` for a table)."""
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"


def plan_grid(
    recipe: str | os.PathLike[str],
    *,
    variants: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out_dir: str | os.PathLike[str],
    threads: int = 0,
) -> list[GridRun]:
    """The grid's runs, seed-major (all variants of seed 0 first, so pairs complete early).

    Args:
        recipe: the recipe every run starts from.
        variants: built-in ``model.variant`` values or the recipe's named variants (see
            :func:`parse_variants`).
        seeds: the ``system.seed`` values.
        overrides: the user's ``--set`` items, applied before the grid's own.
        out_dir: the comparison directory.
        threads: ``system.threads`` of every run (0 keeps the recipe's); ignored when the user
            sets ``system.threads`` in ``overrides``.

    Raises:
        CompareError: an override sets what ``--variants``/``--seeds`` choose.
        ConfigError: the recipe is unknown or the overrides are invalid.
    """
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    clash = sorted(keys & _GRID_KEYS.keys())
    if clash:
        key = clash[0]
        raise CompareError(
            f"--set {key}=... clashes with the grid; choose it with {_GRID_KEYS[key]}"
        )
    named = named_variants(recipe)
    own = ["system.progress=off"]
    if threads and not keys & {"system.threads", "threads"}:
        own.append(f"system.threads={threads}")
    return [
        GridRun(
            variant=v,
            seed=s,
            cfg=load_recipe(
                recipe, [*overrides, *own, *variant_overrides(v, named), f"system.seed={s}"]
            ),
            run_dir=run_dir_for(out_dir, v, s),
        )
        for s in seeds
        for v in variants
    ]


def config_diff(asked: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """``key: run has X, grid asks Y`` for each key that differs where a reused run may not
    (:func:`condattn.train.rundir.config_diff`, purpose ``"reuse"``)."""
    return [
        f"{key}: run has {have!r}, grid asks {want!r}"
        for key, have, want in _diff(asked, saved, purpose="reuse")
    ]


def run_state(run: GridRun) -> RunState | str:
    """The run directory's :class:`~condattn.train.rundir.RunState` (``"new"``, ``"done"``,
    ``"resume"`` or ``"restart"``), or ``"running"`` while a live process holds its lock (see
    the module docstring).

    Raises:
        CompareError: the directory holds a run of another config; the message names the
            directory and the differing keys.
    """
    d = run.run_dir
    state = _state_of(d)
    saved = saved_config(d) if state is not RunState.EMPTY else None
    if saved is None:
        if is_locked(d):  # started moments ago: config.json comes next
            return "running"
        if state in (RunState.STARTED, RunState.FINISHED):
            raise CompareError(f"{d} holds a run without config.json; move it away or delete it")
        return state
    diffs = config_diff(run.cfg.to_dict(), saved)
    if diffs:
        raise CompareError(
            f"{d} holds a run of another config than the grid asks ({'; '.join(diffs)}); "
            "pass another --out, or delete that directory to retrain it"
        )
    return "running" if is_locked(d) else state


def plan_lines(runs: Sequence[GridRun], launcher: str) -> list[str]:
    """What :func:`run_grid` would do with ``runs``, doing nothing (``--dry-run`` under a
    launcher that has no job script to show): a count line, then each run's state, label and
    directory. A directory of another config is refused here as it would be there."""
    states = {run.label: run_state(run) for run in runs}
    head = f"dry run: {len(runs)} run(s) under the {launcher} launcher: {_counts_text(states)}"
    words = {"done": "reuse", "resume": "resume", "running": "running"}
    return [head] + [
        f"  {words.get(str(states[r.label]), 'train'):<8}{r.label} -> {r.run_dir}" for r in runs
    ]


def _counts_text(states: Mapping[str, RunState | str]) -> str:
    """``3 done (reused), 0 to resume, 2 to train[, 1 running elsewhere (locked)]``."""
    count = lambda *names: sum(str(v) in names for v in states.values())  # noqa: E731
    return (
        f"{count('done')} done (reused), {count('resume')} to resume, "
        f"{count('new', 'restart')} to train"
        + (f", {count('running')} running elsewhere (locked)" if count("running") else "")
    )


def _saved_threads(run: GridRun) -> GridRun:
    """The run with the thread count its checkpoint was started with (train() insists on it)."""
    saved = json.loads((run.run_dir / "config.json").read_text())["system"]["threads"]
    system = dataclasses.replace(run.cfg.system, threads=saved)
    return dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, system=system))


def _check_data(run: GridRun, data: Any) -> None:
    """A reused run must have seen data of the same kind and size as the grid's."""
    res = json.loads((run.run_dir / "results.json").read_text())
    synthetic = data.source.startswith("synthetic")
    have = (str(res.get("data_source", "")).startswith("synthetic"), res.get("num_train"))
    want = (synthetic, int(data.train_images.shape[0]))
    if have != want or res.get("num_test") != int(data.test_images.shape[0]):
        raise CompareError(
            f"{run.run_dir} was trained on {res.get('data_source')!r} "
            f"({res.get('num_train')} train / {res.get('num_test')} test images) but the grid "
            f"uses {data.source!r}; pass another --out or delete that directory"
        )


def log_path_for(run: GridRun) -> Path:
    """Where a run's output (child process) or traceback (failure) goes: ``OUT/logs/``."""
    return run.run_dir.parents[1] / "logs" / f"{run.run_dir.parent.name}-{run.run_dir.name}.log"


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output)"


def _failure(run: GridRun, why: str, log_path: Path) -> str:
    return (
        f"run {run.label} failed: {why} (log: {log_path}; to see it alone: condattn train "
        f"{run.run_dir / 'config.toml'} --out {run.run_dir} --overwrite)"
    )


def _train_in_process(run: GridRun, *, resume: bool, data: Any, log_path: Path) -> str:
    """Trains one run here; returns '' or the one-line failure (traceback in ``log_path``)."""
    from condattn.train import train

    try:
        train(run.cfg, data=data, run_dir=run.run_dir, resume=resume)
    except Exception as err:  # a crash inside one run: one line here, the traceback in the log
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(traceback.format_exc())
        return _failure(run, f"{type(err).__name__}: {err}", log_path)
    return ""


def _train_in_child(
    run: GridRun,
    *,
    resume: bool,
    synthetic: bool,
    data_root: str | None,
    log_path: Path,
    env_extra: dict[str, str] | None = None,
    nproc: int = 1,
) -> str:
    """Trains one run in a child process with its own thread budget; returns '' or the failure.

    ``env_extra`` (e.g. ``CUDA_VISIBLE_DEVICES``) goes into the child's environment; ``nproc > 1``
    runs it as that many DDP processes (torchrun). The child dies with this process
    (:mod:`condattn.experiments._worker`).
    """
    threads = str(run.cfg.system.threads or 1)
    env = {
        **os.environ,
        **(env_extra or {}),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        # Idle OpenMP threads sleep instead of spinning on cores the other jobs need.
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    spec = {
        "config": run.cfg.to_dict(),
        "run_dir": str(run.run_dir),
        "resume": resume,
        "synthetic": synthetic,
        "data": data_root,
        "parent_pid": os.getpid(),
        "nproc": nproc,
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "condattn.experiments._worker", json.dumps(spec)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    if proc.returncode != 0:
        return _failure(run, f"exit status {proc.returncode}: {_last_line(log_path)}", log_path)
    return ""


def run_grid(
    runs: Sequence[GridRun],
    *,
    jobs: int = 1,
    synthetic: bool = False,
    data_root: str | None = None,
    launcher: Any = None,
) -> dict[str, RunState | str]:
    """Trains what the grid still lacks; returns each run's state before this call.

    Args:
        runs: from :func:`plan_grid`.
        jobs: runs trained side by side, each in its own process (1: one after another, here);
            used when ``launcher`` is None.
        synthetic: train on the synthetic stand-in (``train --synthetic``).
        data_root: a CIFAR-100 folder or archive (``train --data``).
        launcher: how the runs execute (:mod:`condattn.experiments.launchers`); default
            ``LocalLauncher(jobs=jobs)``.

    Progress lines go to the ``condattn.experiments`` loggers (INFO).

    Raises:
        CompareError: a run directory does not match the grid, or runs failed (one line each).
        GridPending: runs are still queued or running (``--no-wait``, or another process's);
            the message gives each run's state.
    """
    from condattn.experiments.launchers import GridPending, LocalLauncher
    from condattn.train.build import load_data

    if jobs < 1:
        raise CompareError(f"--jobs must be >= 1, got {jobs}")
    launcher = launcher if launcher is not None else LocalLauncher(jobs=jobs)
    states = {run.label: run_state(run) for run in runs}  # every check before any training
    data = load_data(runs[0].cfg, root=data_root, synthetic=synthetic)
    for run in runs:
        if states[run.label] is RunState.FINISHED:
            _check_data(run, data)
    todo = [r for r in runs if states[r.label] is not RunState.FINISHED]
    logger.info(
        f"compare: {len(runs)} runs: {_counts_text(states)}; data: {data.source}; "
        f"launcher: {launcher.name}"
    )
    todo = [_saved_threads(r) if states[r.label] is RunState.STARTED else r for r in todo]
    statuses = launcher.launch(
        todo, states=states, synthetic=synthetic, data_root=data_root, data=data
    )
    failures = [s.detail for s in statuses.values() if s.state == "failed"]
    if any(s.state in ("queued", "running") for s in statuses.values()):
        raise GridPending(statuses)
    if failures:
        raise CompareError(f"{len(failures)} of {len(todo)} run(s) failed:\n" + "\n".join(failures))
    return states
