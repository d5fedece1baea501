"""The launcher flags that ``compare`` and ``table`` share (docs/howto-cluster.md).

::

    condattn compare recipes/quick.toml --gpus-per-run 1 --runs-per-gpu 2     # an 8-GPU node
    condattn compare recipes/quick.toml --launcher slurm --partition gpu --time 4:00:00
    condattn compare recipes/quick.toml --launcher slurm --no-wait            # submit, return
    condattn table 3 --seeds 5 --launcher slurm --dry-run                     # the array job
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_launcher_arguments", "launcher_from_args"]


def add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """``--launcher`` and the resources of each run (docs/howto-cluster.md)."""
    g = p.add_argument_group("launcher (docs/howto-cluster.md)")
    g.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: processes on this machine (default); slurm: one submitit array job",
    )
    g.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="local: runs side by side (default 1; with --gpus-per-run: one per GPU slot)",
    )
    g.add_argument(
        "--gpus-per-run",
        type=int,
        default=None,
        help="GPUs of each run (local: its own, round-robin over the visible ones; >1: DDP)",
    )
    g.add_argument("--runs-per-gpu", type=int, default=None, help="local: pack K runs per GPU")
    g.add_argument("--no-wait", action="store_true", help="slurm: submit and return at once")
    g.add_argument("--dry-run", action="store_true", help="print what would run; run nothing")
    for flag, kind, help_ in (
        ("--partition", str, "slurm: partition"),
        ("--time", str, "slurm: time limit per run (minutes or HH:MM:SS); requeued after it"),
        ("--cpus-per-run", int, "slurm: CPU cores (threads) of each run process (default 1)"),
        ("--tasks-per-run", int, "slurm: DDP processes per run (default: max(1, GPUs))"),
        ("--mem-gb", float, "slurm: memory per run"),
        ("--account", str, "slurm: account"),
        ("--qos", str, "slurm: quality of service"),
    ):
        g.add_argument(flag, type=kind, default=None, help=help_)
    g.add_argument(
        "--sbatch",
        dest="extra",
        action="append",
        default=None,
        metavar="OPTION",
        help="slurm: an extra sbatch option, e.g. --sbatch=--constraint=a100 (repeatable)",
    )


def launcher_from_args(args: argparse.Namespace, recipe: str | None) -> Any:
    """The launcher the flags ask for; SLURM flags override the recipe's ``[launcher.slurm]``."""
    from condattn.experiments.launchers import make_launcher

    if args.launcher == "local":
        slurm_only = ("partition", "time", "cpus_per_run", "tasks_per_run", "mem_gb", "account")
        given = [
            f"--{k.replace('_', '-')}" for k in (*slurm_only, "qos", "extra") if getattr(args, k)
        ]
        if given or args.no_wait:
            raise ValueError(
                f"{', '.join(given or ['--no-wait'])} only apply to --launcher slurm; add it"
            )
        return make_launcher(
            "local",
            jobs=args.jobs,
            gpus_per_run=args.gpus_per_run or 0,
            runs_per_gpu=args.runs_per_gpu or 1,
        )
    table = _recipe_slurm_table(recipe) if recipe else {}
    flags = {
        k: getattr(args, k)
        for k in (
            "partition",
            "time",
            "gpus_per_run",
            "tasks_per_run",
            "cpus_per_run",
            "mem_gb",
            "account",
            "qos",
            "extra",
        )
    }
    return make_launcher(
        "slurm",
        **{**table, **{k: v for k, v in flags.items() if v is not None}},
        wait=not args.no_wait,
        dry_run=args.dry_run,
    )


def _recipe_slurm_table(recipe: str) -> dict[str, Any]:
    from condattn.train.recipe import _read_toml

    table = _read_toml(Path(recipe)).get("launcher", {}).get("slurm", {})
    if not isinstance(table, dict):
        raise ValueError(f"{recipe}: [launcher.slurm] must be a table")
    return table
