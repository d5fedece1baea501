"""The ``condattn`` command line: train, eval, report, compare, profile and analyze.

Subcommands live in :data:`COMMANDS` (name -> (help, add_arguments, run)); add one there.

Examples::

    condattn train recipes/quick.toml
    condattn train recipes/table3/se_r_resnet50.toml --set system.seed=1 --out runs/x
    condattn train recipes/quick.toml --out runs/q --resume          # continue a killed run
    torchrun --nproc_per_node=2 -m condattn.cli train recipes/quick.toml
    condattn eval runs/quick/checkpoint.pt
    condattn report runs/se_resnet50 runs/se_r_resnet50 --plot cmp.png   # --overwrite replaces
    condattn compare recipes/quick.toml --variants se,se_a,se_r --seeds 0,1,2 --jobs 2
    condattn compare recipes/quick.toml --launcher slurm --time 4:00:00 --no-wait
    condattn table 3 --seeds 5 --launcher slurm --dry-run              # the array job
    condattn report runs/compare/quick                                # a compare directory
    condattn profile se_resnet50 --variant se_r --rules paper
    condattn analyze runs/se_resnet50/checkpoint.pt runs/se_r_resnet50/checkpoint.pt
    condattn --version

Every mistake (a bad file, flag, recipe value or environment) ends in one line on stderr,
``condattn COMMAND: error: ...``, and exit status 2. Commands write only where told (``--out``,
``--plot``) or into the run directory, and never replace a file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["COMMANDS", "main"]

_REPO = Path(__file__).resolve().parents[1]


class UserError(Exception):
    """A mistake on the command line; printed without a traceback."""


def check_device(requested: str, *, flag: str) -> None:
    """Refuses a CUDA device that this torch cannot see, in one line naming ``flag``."""
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        build = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
        raise UserError(
            f"{flag}={requested} but torch {torch.__version__} (built {build}) sees no CUDA "
            f"device; use {flag}=cpu or {flag}=auto"
        )


def _check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuses to mix a new run into an old one, and says which command works instead."""
    ckpt = run_dir / "checkpoint.pt"
    started = ckpt.exists() or (run_dir / "metrics.jsonl").exists()
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite starts it over: pass one")
    if resume and not ckpt.is_file():
        if started:
            raise UserError(
                f"--resume: {run_dir} has no checkpoint.pt (its run stopped before finishing "
                "epoch 1), so there is nothing to resume; start it again with --overwrite"
            )
        raise UserError(f"--resume: no run in {run_dir} (no checkpoint.pt); drop --resume")
    if started and not (resume or overwrite):
        if ckpt.exists():
            raise UserError(
                f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                "start over, or --out for another directory"
            )
        raise UserError(
            f"{run_dir} holds a run that stopped before its first checkpoint (nothing to "
            "resume); pass --overwrite to start it again, or --out for another directory"
        )


def _check_unlocked(run_dir: Path) -> None:
    """Refuses a run directory that another live process is training (its lock is held)."""
    from condattn.train.lock import RunLock, RunLockedError

    try:
        with RunLock(run_dir) if run_dir.is_dir() else contextlib.nullcontext():
            pass
    except RunLockedError as err:
        raise UserError(str(err)) from None


# --data of train, eval and compare: the same meaning as data.root.
_DATA_HELP = (
    "data.root: a CIFAR-100/CIFAR-10 folder or .tar.gz, or an image folder with train/ and val/ "
    "class folders (data.dataset says which; default: the recipe's data.root, else "
    "$CONDATTN_DATA, and for CIFAR ./data and ../shared/data)"
)


def _resolve_recipe(name: str) -> str:
    """A recipe path as given, or looked up in ./recipes and <repo>/recipes (``.toml`` optional)."""
    if Path(name).is_file():
        return name
    for root in (Path.cwd() / "recipes", _REPO / "recipes"):
        for cand in (root / name, root / f"{name}.toml"):
            if cand.is_file():
                return str(cand)
    return name  # load_recipe raises with the list of recipes


# --- train -------------------------------------------------------------------------------------


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML (e.g. recipes/quick.toml or table3/se_r_resnet50)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.epochs=2 (repeatable)",
    )
    p.add_argument("--data", help=_DATA_HELP)
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


def _run_train(args: argparse.Namespace) -> int:
    from condattn.train import distributed as D
    from condattn.train.build import load_data
    from condattn.train.loop import train
    from condattn.train.recipe import load_recipe

    cfg = load_recipe(_resolve_recipe(args.recipe), args.overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / cfg.name
    env = D.detect()
    check_device(cfg.system.device, flag="--set system.device")
    if env.is_main:
        _check_unlocked(run_dir)
        _check_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite)
    if env.is_main and args.overwrite:
        for name in ("checkpoint.pt", "metrics.jsonl", "results.json", "environment.json"):
            (run_dir / name).unlink(missing_ok=True)
    data = load_data(cfg, root=args.data, synthetic=args.synthetic, download=args.download)
    try:
        train(
            cfg,
            data=data,
            run_dir=run_dir,
            resume=args.resume,
            log=lambda *a: print(*a, flush=True),
        )
    finally:
        D.cleanup()
    return 0


# --- eval --------------------------------------------------------------------------------------


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint.pt (or the run directory holding it)")
    p.add_argument("--data", help=_DATA_HELP)
    p.add_argument("--synthetic", action="store_true", help="evaluate on the synthetic set")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def _run_eval(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from condattn.data import TensorLoader
    from condattn.train import distributed as D
    from condattn.train.build import build_augment, build_loss, load_data
    from condattn.train.checkpoint import load_checkpoint, model_from_checkpoint
    from condattn.train.loop import evaluate, speed_plan
    from condattn.train.recipe import config_from_dict

    check_device(args.device, flag="--device")
    state = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(state["config"])
    cfg = dataclasses.replace(cfg, system=dataclasses.replace(cfg.system, device=args.device))
    data = load_data(cfg, root=args.data, synthetic=args.synthetic)
    device = D.device_for(D.DistEnv(), args.device)
    plan = speed_plan(cfg, device)  # the training's fast path: precision, format, threads
    torch.set_num_threads(plan.threads)
    model = model_from_checkpoint(
        state, num_classes=data.num_classes, source=str(args.checkpoint)
    ).to(device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = TensorLoader(
        data.test_images,
        data.test_labels,
        batch_size=cfg.system.eval_batch_size,
        shuffle=False,
        augment=build_augment(cfg, train=False, data=data, channels_last=plan.channels_last),
        device=device,
    )
    with torch.inference_mode():
        res = evaluate(
            model,
            loader,
            criterion=build_loss(cfg),
            num_aux=len(cfg.loss.aux_weights),
            plan=plan,
        )
    out = {
        "checkpoint": str(args.checkpoint),
        "epoch": state["epoch"],
        "data": data.source,
        "test_top1": res["top1"],
        "test_top5": res["top5"],
        "test_loss": res["loss"],
        "n": res["n"],
    }
    print(json.dumps(out, indent=2))
    return 0


# --- report ------------------------------------------------------------------------------------


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    p.add_argument(
        "--plot", metavar="PNG", help="also draw the runs' test-error curves into this file"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")


def _fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def report_table(run_dirs: Sequence[str | Path]) -> tuple[str, dict[str, list[dict]]]:
    """Markdown table of runs (final = reported, best = informational) and their histories."""
    from condattn.train.metrics import read_jsonl

    lines = [
        "| run | arch | variant | lossW | epochs | final top-1 | final top-5 | best top-1 (epoch) "
        "| paper top-1 | Δ vs paper |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    histories: dict[str, list[dict]] = {}
    for d in map(Path, run_dirs):
        res_path = d / "results.json"
        if not res_path.is_file():
            raise UserError(f"{d} is not a finished run (no results.json)")
        r = json.loads(res_path.read_text())
        histories[f"{r['name']} ({d.name})" if r["name"] != d.name else d.name] = read_jsonl(
            d / "metrics.jsonl"
        )
        lw = ", ".join(f"{w:g}" for w in r["aux_weights"]) or "-"
        best = r["best"]
        lines.append(
            f"| {d} | {r['arch']} | {r['variant']} | {lw} | {r['epochs']} | "
            f"{_fmt(r['final']['top1'])} | {_fmt(r['final']['top5'])} | "
            f"{_fmt(best['top1'])} ({best['epoch']}) | {_fmt(r['paper']['top1'])} | "
            f"{_fmt(r['delta_vs_paper'])} |"
        )
    return "\n".join(lines), histories


def _run_report(args: argparse.Namespace) -> int:
    from condattn.experiments import is_compare_dir, refresh_summary, render_markdown
    from condattn.train.plots import plot_comparison

    if len(args.run_dirs) == 1 and is_compare_dir(args.run_dirs[0]):  # regenerate its summary
        print(render_markdown(refresh_summary(args.run_dirs[0])), end="")
        return 0
    table, histories = report_table(args.run_dirs)
    if args.plot and Path(args.plot).exists() and not args.overwrite:
        raise UserError(f"--plot {args.plot} exists; pass --overwrite to replace it")
    print(table)
    if not args.plot:
        print("\n(no plot written: --plot FILE.png draws the test-error curves)")
        return 0
    path = plot_comparison(histories, args.plot)
    print(f"\ncomparison plot written to {path}")
    return 0


# --- compare -----------------------------------------------------------------------------------


def _add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML every run starts from (e.g. recipes/quick.toml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value of every run (repeatable)",
    )
    p.add_argument("--data", help=_DATA_HELP)
    p.add_argument("--synthetic", action="store_true", help="use the synthetic CIFAR-100 stand-in")
    p.add_argument("--out", help="comparison directory (default: runs/compare/<recipe>)")
    p.add_argument("--variants", default="se,se_a,se_r", help="comma-separated: se, se_a, se_r")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated integers, e.g. 0,1,2")
    from condattn._cli_launch import add_launcher_arguments  # --launcher, --jobs, --gpus-per-run

    add_launcher_arguments(p)


def _run_compare(args: argparse.Namespace) -> int:
    from condattn.experiments import compare, parse_seeds, parse_variants, render_markdown

    variants, seeds = parse_variants(args.variants), parse_seeds(args.seeds)
    recipe = _resolve_recipe(args.recipe)
    if not Path(recipe).is_file():
        from condattn.train.recipe import list_recipes

        raise UserError(
            f"unknown recipe {args.recipe!r}; valid: a TOML file or one of "
            f"{', '.join(list_recipes(_REPO / 'recipes'))}"
        )
    out = args.out or str(Path("runs") / "compare" / Path(recipe).stem)
    from condattn._cli_launch import launcher_from_args
    from condattn.experiments.launchers import GridPending

    launcher = launcher_from_args(args, recipe)
    if args.dry_run and launcher.name == "local":
        raise UserError("--dry-run prints the array job of --launcher slurm; add it")
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
            log=lambda *a: print(*a, flush=True),
            launcher=launcher,
        )
    except GridPending as pending:  # --no-wait: the states; the same command collects
        print(pending, flush=True)
        return 0
    if args.dry_run:
        return 0
    print(render_markdown(summary), end="")
    return 0


# --- profile -----------------------------------------------------------------------------------


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="a registered model name (e.g. se_resnet50), timm:NAME or torchvision:NAME"
    )
    p.add_argument("--variant", default="se", help="se | se_a | se_r")
    p.add_argument("--rules", default="paper", help="MAC rules: paper | thop | flop_counter")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--r", type=int, help="SE reduction ratio of condattn's zoo models (default 8)")
    p.add_argument(
        "--aux-at",
        help="comma-separated stages for heads, or auto (default: layer2,layer3 for the zoo, "
        "auto for timm:/torchvision: models)",
    )
    p.add_argument("--image-size", type=int, default=32, help="side of the square input")


def _run_profile(args: argparse.Namespace) -> int:
    from condattn.models import is_external
    from condattn.profiling import MAC_RULES, count_macs, count_params
    from condattn.train.build import build_model
    from condattn.train.recipe import config_from_dict

    if args.rules not in MAC_RULES:
        raise UserError(f"unknown --rules {args.rules!r}; valid: {', '.join(MAC_RULES)}")
    external = is_external(args.model)
    model_cfg = {"arch": args.model, "variant": args.variant}
    model_cfg["aux_at"] = args.aux_at or ("auto" if external else "layer2,layer3")
    if args.r is not None:  # zoo only: the config refuses r for a timm:/torchvision: model
        model_cfg["r"] = args.r
    cfg = config_from_dict({"model": model_cfg})
    model = build_model(cfg, num_classes=args.num_classes)
    shape = (1, 3, args.image_size, args.image_size)
    params, macs = count_params(model), count_macs(model, shape, rules=args.rules)
    r = "" if external else f" r={cfg.model.r}"
    print(
        f"{args.model} variant={args.variant}{r}: params {params / 1e6:.3f}M, "
        f"MACs {macs / 1e9:.3f}G (rules={args.rules}, input {'x'.join(map(str, shape))})"
    )
    return 0


# --- analyze: condattn/_cli_analyze.py ----------------------------------------------------------


def _add_analyze(p: argparse.ArgumentParser) -> None:
    from condattn._cli_analyze import add_arguments  # deferred: keep `condattn -h` fast

    add_arguments(p)


def _run_analyze(args: argparse.Namespace) -> int:
    from condattn._cli_analyze import run

    return run(args)


# --- table: condattn/_cli_launch.py ------------------------------------------------------------


def _add_table(p: argparse.ArgumentParser) -> None:
    from condattn._cli_launch import add_table_arguments

    add_table_arguments(p)


def _run_table(args: argparse.Namespace) -> int:
    from condattn._cli_launch import run_table

    return run_table(args)


# name -> (help, add_arguments, run); add a subcommand by adding an entry.
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "train": ("train a recipe", _add_train, _run_train),
    "eval": ("evaluate a checkpoint on the test set", _add_eval, _run_eval),
    "report": ("compare finished runs (table + plot)", _add_report, _run_report),
    "compare": (
        "train variants x seeds and test the differences (reuses finished runs)",
        _add_compare,
        _run_compare,
    ),
    "table": (
        "train a paper table's recipes x seeds (any launcher); summary vs the paper",
        _add_table,
        _run_table,
    ),
    "profile": ("count params and MACs of a model", _add_profile, _run_profile),
    "analyze": (
        "std of the attention gates s per block (paper Fig. 6)",
        _add_analyze,
        _run_analyze,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="condattn", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add, _run) in COMMANDS.items():
        add(sub.add_parser(name, help=help_))
    return parser


def _version() -> str:
    import platform

    import torch

    from condattn import __version__

    return f"condattn {__version__} (torch {torch.__version__}, python {platform.python_version()})"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``condattn`` console script; returns the exit status."""
    from condattn.data import CifarDataError
    from condattn.train.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except (UserError, ConfigError, CifarDataError, ValueError, FileNotFoundError) as err:
        # (RunLockedError: a ValueError too, see condattn.train.lock.)
        # ValueError covers the library's own argument checks (e.g. ConversionError), whose
        # messages name the valid choices.
        print(f"condattn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
