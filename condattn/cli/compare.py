"""``condattn compare RECIPE``: train variants x seeds and test the differences
(:mod:`condattn.experiments`; reuses finished runs, resumes killed ones)."""

from __future__ import annotations

import argparse
from pathlib import Path

from condattn.cli._common import DATA_HELP, UserError, add_overrides, resolve_recipe
from condattn.cli._launch import add_launcher_arguments, launcher_from_args

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train variants x seeds and test the differences (reuses finished runs)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML every run starts from (e.g. recipes/quick.toml)")
    add_overrides(p, help="override a config value of every run (repeatable)")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--synthetic", action="store_true", help="use the synthetic CIFAR-100 stand-in")
    p.add_argument("--out", help="comparison directory (default: runs/compare/<recipe>)")
    p.add_argument(
        "--variants",
        default="se,se_a,se_r",
        help="comma-separated: se, se_a, se_r, or a [variants.NAME] of the recipe "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--seeds", default="0,1,2", help="comma-separated integers (default: %(default)s)"
    )
    add_launcher_arguments(p)  # --launcher, --jobs, --gpus-per-run, --no-wait, SLURM resources


def run(args: argparse.Namespace) -> int:
    from condattn.experiments import compare, parse_seeds, parse_variants, render_markdown

    recipe = resolve_recipe(args.recipe)
    known = recipe if Path(recipe).is_file() else None  # its [variants.NAME] are valid names
    variants, seeds = parse_variants(args.variants, known), parse_seeds(args.seeds)
    if not Path(recipe).is_file():
        from condattn.train.recipe import list_recipes, recipes_dir

        own = recipes_dir()
        raise UserError(
            f"unknown recipe {args.recipe!r}; valid: a TOML file or one of "
            f"{', '.join(list_recipes(own) if own else [])}"
        )
    out = args.out or str(Path("runs") / "compare" / Path(recipe).stem)
    from condattn.experiments.launchers import GridPending

    launcher = launcher_from_args(args, recipe)
    try:
        summary = compare(
            recipe,
            variants=variants,
            seeds=seeds,
            out_dir=out,
            overrides=args.overrides,
            jobs=args.jobs or 1,
            synthetic=args.synthetic,
            data_root=args.data,
            launcher=launcher,
            dry_run=args.dry_run,
        )
    except GridPending as pending:  # --no-wait: the states; the same command collects
        print(pending, flush=True)
        return 0
    if not args.dry_run:
        print(render_markdown(summary), end="")
    return 0
