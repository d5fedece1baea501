"""``condattn train RECIPE``: one run directory (see :mod:`condattn.train.loop`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from condattn.cli._common import DATA_HELP, UserError, add_overrides, check_device, resolve_recipe

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train a recipe"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML (e.g. recipes/quick.toml or table3/se_r_resnet50)")
    add_overrides(p, help="override a config value, e.g. --set optim.epochs=2 (repeatable)")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument(
        "--download", action="store_true", help="fetch CIFAR-100/10 if not found (needs internet)"
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="train on an in-memory synthetic CIFAR-100 stand-in (= data.dataset synthetic)",
    )


def run(args: argparse.Namespace) -> int:
    from condattn.train import distributed as D
    from condattn.train.build import load_data
    from condattn.train.loop import train
    from condattn.train.recipe import load_recipe
    from condattn.train.rundir import clear_run

    cfg = load_recipe(resolve_recipe(args.recipe), args.overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    env = D.detect()
    check_device(cfg.system.device, flag="--set system.device")
    if env.is_main:
        check_unlocked(run_dir)
        check_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite)
    if env.is_main and args.overwrite:
        clear_run(run_dir)
    data = load_data(cfg, root=args.data, synthetic=args.synthetic, download=args.download)
    try:
        train(
            cfg,
            data=data,
            run_dir=run_dir,
            resume=args.resume,
        )
    finally:
        D.cleanup()
    return 0


def check_unlocked(run_dir: Path) -> None:
    """Refuses a run directory that another live process is training (its lock is held), before
    ``--overwrite`` would delete its files or ``--resume`` would train it a second time."""
    from condattn.train.lock import RunLock, RunLockedError

    if not run_dir.is_dir():
        return
    try:
        with RunLock(run_dir):
            pass
    except RunLockedError as err:
        raise UserError(str(err)) from None


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuses to mix a new run into an old one, and says which command works instead."""
    from condattn.train.rundir import RunState, run_state

    state = run_state(run_dir)
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite starts it over: pass one")
    if resume and state is RunState.UNSTARTED:
        raise UserError(
            f"--resume: {run_dir} has no checkpoint.pt (its run stopped before finishing "
            "epoch 1), so there is nothing to resume; start it again with --overwrite"
        )
    if resume and state is RunState.EMPTY:
        raise UserError(f"--resume: no run in {run_dir} (no checkpoint.pt); drop --resume")
    if resume or overwrite:
        return
    if state in (RunState.STARTED, RunState.FINISHED):
        raise UserError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
            "start over, or --out for another directory"
        )
    if state is RunState.UNSTARTED:
        raise UserError(
            f"{run_dir} holds a run that stopped before its first checkpoint (nothing to "
            "resume); pass --overwrite to start it again, or --out for another directory"
        )
