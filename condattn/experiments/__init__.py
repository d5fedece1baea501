"""Experiments on top of :func:`condattn.train.train`: does conditioning help, and by how much?

:func:`compare` trains a grid of variants x seeds as ordinary run directories (reusing finished
runs and resuming killed ones), then writes a summary that states its conditions:

    OUT/<variant>/seed<k>/   one train() run directory per cell
    OUT/logs/                child-process output and tracebacks of failed runs
    OUT/slurm/               the SLURM launcher's job logs and jobs.json (--launcher slurm)
    OUT/compare.json         conditions, per-variant mean/std/runs, paired differences
    OUT/compare.md           the table a paper would print, with one sentence per difference
    OUT/compare.png          test error vs epoch per variant (mean, min-max band over seeds)

This is a consumer layer: ``condattn.train`` never imports it. See docs/howto-compare.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condattn.experiments.grid import (
    CompareError,
    GridRun,
    parse_seeds,
    parse_variants,
    plan_grid,
    plan_lines,
    run_grid,
)
from condattn.experiments.launchers import prints_own_dry_run
from condattn.experiments.stats import describe, paired_difference, pairs_for_power
from condattn.experiments.summary import (
    find_grid,
    is_compare_dir,
    refresh_summary,
    render_markdown,
    summarize,
    write_summary,
)
from condattn.train.speed import available_cores

__all__ = [
    "CompareError",
    "GridRun",
    "compare",
    "describe",
    "find_grid",
    "is_compare_dir",
    "paired_difference",
    "pairs_for_power",
    "parse_seeds",
    "parse_variants",
    "plan_grid",
    "refresh_summary",
    "render_markdown",
    "run_grid",
    "summarize",
    "write_summary",
]


logger = logging.getLogger(__name__)  # progress lines (INFO); the CLI shows them


def _cores() -> int:
    """CPU cores this process may use (:func:`condattn.train.speed.available_cores`)."""
    return available_cores()[0]


def compare(
    recipe: str | os.PathLike[str],
    *,
    variants: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    jobs: int = 1,
    synthetic: bool = False,
    data_root: str | None = None,
    launcher: Any = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Trains (or reuses) every ``variant x seed`` run of ``recipe`` and summarises them.

    Args:
        recipe: the recipe every run starts from.
        variants: ``model.variant`` values, e.g. ``("se", "se_a", "se_r")``.
        seeds: ``system.seed`` values; variants are paired by seed.
        out_dir: the comparison directory (see the module docstring).
        overrides: ``--set`` items applied to every run.
        jobs: runs trained side by side in child processes; each gets ``max(1, cores // jobs)``
            threads unless ``overrides`` set ``system.threads``.
        synthetic: train on the in-memory synthetic stand-in.
        data_root: a CIFAR-100 folder or archive (default: search).
        launcher: how the runs execute (:func:`~condattn.experiments.launchers.make_launcher`:
            ``local``, ``slurm``); default: the local launcher with ``jobs``. Its ``threads``
            become each run's ``system.threads``.
        dry_run: print what would run (each run's state: reuse, resume or train) and stop;
            a SLURM launcher's own dry run prints its array job instead.

    Returns:
        The content of ``compare.json`` (empty for a dry run).

    Raises:
        CompareError: a bad grid, a run directory of another config, or failed runs.
        ConfigError: the recipe is unknown or an override is invalid.
        GridPending: runs are still queued or running (``--no-wait``); call again to collect.
    """
    if jobs < 1:
        raise CompareError(f"--jobs must be >= 1, got {jobs}")
    runs = plan_grid(
        recipe,
        variants=variants,
        seeds=seeds,
        overrides=overrides,
        out_dir=out_dir,
        threads=getattr(launcher, "threads", 0) or max(1, _cores() // jobs),
    )
    if dry_run and not prints_own_dry_run(launcher):
        name = getattr(launcher, "name", "local")
        print("\n".join(plan_lines(runs, name)), flush=True)
        return {}
    run_grid(runs, jobs=jobs, synthetic=synthetic, data_root=data_root, launcher=launcher)
    if prints_own_dry_run(launcher):
        return {}  # the launcher printed what it would submit
    summary = write_summary(
        out_dir, variants=variants, seeds=seeds, recipe=recipe, overrides=overrides
    )
    logger.info(f"summary: {Path(out_dir) / 'compare.md'} (.json, .png)")
    return summary
