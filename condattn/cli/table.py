"""``condattn table N --seeds K``: every recipe of a paper table x seeds, on the same grid as
``compare`` and under any launcher (:mod:`condattn.experiments.table`); the summary against the
paper's numbers goes to ``OUT/table<N>.md`` and ``.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from condattn.cli._common import DATA_HELP, add_overrides
from condattn.cli._launch import add_launcher_arguments, launcher_from_args

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train a paper table's recipes x seeds (any launcher); summary vs the paper"


def _recipes_root() -> str:
    from condattn.train.recipe import recipes_dir

    return str(recipes_dir() or Path("recipes"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="paper table number, 3-11")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..K-1 per recipe (default 1)")
    add_overrides(p, help="override a config value of every run (repeatable)")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--synthetic", action="store_true", help="use the synthetic CIFAR-100 stand-in")
    p.add_argument("--out", help="output folder (default runs/table<N>)")
    p.add_argument("--recipes", help="the recipes folder (default: the ones condattn comes with)")
    p.add_argument(
        "--summarize-only", action="store_true", help="write the summary of finished runs only"
    )
    add_launcher_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Trains (or reuses) a table's runs and prints its summary against the paper."""
    from condattn.experiments.launchers import GridPending
    from condattn.experiments.table import plan_table, run_table, summarize_table

    out = args.out or str(Path("runs") / f"table{args.table}")
    root = args.recipes or _recipes_root()
    base = Path(root) / "base.toml"
    launcher = launcher_from_args(args, str(base) if base.is_file() else None)
    if args.summarize_only:
        runs = plan_table(args.table, seeds=args.seeds, out_dir=out, root=root)
        summary = summarize_table(
            args.table, runs, seeds=args.seeds, overrides=args.overrides, out_dir=out
        )
        print(summary["markdown"], end="")
        return 0
    try:
        summary = run_table(
            args.table,
            seeds=args.seeds,
            out_dir=out,
            root=root,
            overrides=args.overrides,
            synthetic=args.synthetic,
            data_root=args.data,
            launcher=launcher,
            dry_run=args.dry_run,
        )
    except GridPending as pending:  # --no-wait: the states; the same command collects
        print(pending, flush=True)
        return 0
    if summary is not None:
        print(summary["markdown"], end="")
    return 0
