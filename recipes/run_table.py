"""Run every recipe of one paper table for N seeds and compare with the paper (mean ± std).

Usage::

    python recipes/run_table.py 3 --seeds 3                       # Table 3, seeds 0, 1, 2
    python recipes/run_table.py 8 --seeds 2 --set optim.epochs=50 \
        --set "optim.milestones=[0.3,0.6,0.8]" --data /path/to/cifar   # the steps as fractions
    python recipes/run_table.py 6 --seeds 1 --dry-run             # print the commands only
    python recipes/run_table.py 6 --seeds 3 --summarize-only      # tables from finished runs

A recipe belongs to a table when its ``[paper] tables`` lists it, so Table 4 re-uses the SE and
SE-R runs of Table 3. Each run goes to ``OUT/<recipe>/seed<k>`` (default OUT: runs/table<T>); a
finished run (results.json) is skipped and an interrupted one is resumed, so the script can be
re-started. The summary, ``OUT/table<T>.md`` and ``OUT/table<T>.json``, reports the FINAL-epoch
test top-1 (mean ± sample std over seeds) next to the paper's number, and, for runs with a val
split (``--set data.val_fraction=0.1``), the test top-1 at the epoch chosen on val. An epoch
chosen on the test set is never reported.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from condattn.train.recipe import list_recipes, load_recipe  # noqa: E402


def table_recipes(table: str) -> list[tuple[str, object]]:
    """(relative path, config) of the recipes whose ``paper.tables`` include ``table``."""
    out = []
    for name in list_recipes(HERE):
        cfg = load_recipe(HERE / name)
        if table in cfg.paper.tables:
            out.append((name, cfg))
    if not out:
        valid = sorted(
            {t for n in list_recipes(HERE) for t in load_recipe(HERE / n).paper.tables}, key=int
        )
        raise SystemExit(f"no recipe for table {table!r}; tables with recipes: {valid}")
    return out


def _train_cmd(recipe: str, seed: int, run_dir: Path, args: argparse.Namespace) -> list[str]:
    cmd = ["train", str(HERE / recipe), "--out", str(run_dir), "--set", f"system.seed={seed}"]
    for item in args.set:
        cmd += ["--set", item]
    if args.data:
        cmd += ["--data", args.data]
    if args.synthetic:
        cmd.append("--synthetic")
    if (run_dir / "checkpoint.pt").is_file():
        cmd.append("--resume")
    return cmd


def run_all(recipes, args: argparse.Namespace, out: Path) -> None:
    exe = shutil.which("condattn")
    prefix = [exe] if exe else [sys.executable, "-m", "condattn.cli"]
    for name, _cfg in recipes:
        for seed in range(args.seeds):
            run_dir = out / Path(name).stem / f"seed{seed}"
            if (run_dir / "results.json").is_file():
                print(f"skip {run_dir} (finished)")
                continue
            cmd = _train_cmd(name, seed, run_dir, args)
            print(shlex.join(["condattn", *cmd]), flush=True)
            if args.dry_run:
                continue
            subprocess.run([*prefix, *cmd], check=True)


def summarize(table: str, recipes, args: argparse.Namespace, out: Path) -> dict:
    rows = []
    for name, cfg in recipes:
        finals, chosen = [], []
        for seed in range(args.seeds):
            res = out / Path(name).stem / f"seed{seed}" / "results.json"
            if res.is_file():
                r = json.loads(res.read_text())
                finals.append(r["final"]["top1"])
                if r.get("val_chosen"):
                    chosen.append(r["val_chosen"]["top1"])
        n = len(finals)
        mean = statistics.fmean(finals) if n else None
        rows.append(
            {
                "recipe": name,
                "row": cfg.paper.row,
                "paper": cfg.paper.top1,
                "n": n,
                "mean": mean,
                "std": statistics.stdev(finals) if n > 1 else (0.0 if n else None),
                "finals": finals,
                "val_chosen_mean": statistics.fmean(chosen) if n and len(chosen) == n else None,
                "delta": (mean - cfg.paper.top1) if n else None,
            }
        )
    import torch

    summary = {
        "table": table,
        "seeds": args.seeds,
        "overrides": args.set,
        "reported": "final-epoch test top-1, mean ± sample std over seeds",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    lines = [
        f"# Table {table}: reproduction vs paper",
        "",
        f"Final-epoch CIFAR-100 test top-1 (%), mean ± std over the seeds that finished "
        f"(of {args.seeds}); torch {torch.__version__}; overrides: {args.set or 'none'}.",
        "",
        "| row | recipe | paper | ours (mean ± std) | n | Δ | at the val-chosen epoch (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = f"{r['mean']:.2f} ± {r['std']:.2f}" if r["n"] else "-"
        delta = f"{r['delta']:+.2f}" if r["n"] else "-"
        vc = r["val_chosen_mean"]
        best = f"{vc:.2f}" if vc is not None else "- (no val split)"
        lines.append(
            f"| {r['row']} | {r['recipe']} | {r['paper']:.2f} | {ours} | {r['n']} | "
            f"{delta} | {best} |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"table{table}.md").write_text("\n".join(lines) + "\n")
    (out / f"table{table}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", help="paper table number, 3-11")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per recipe")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override passed to every run (repeatable)",
    )
    p.add_argument("--data", help="CIFAR-100 folder or archive")
    p.add_argument("--synthetic", action="store_true", help="train on the synthetic set")
    p.add_argument("--out", help="output folder (default runs/table<T>)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--summarize-only", action="store_true", help="only write the summary")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    out = Path(args.out) if args.out else Path("runs") / f"table{args.table}"
    recipes = table_recipes(args.table)
    if not args.summarize_only:
        run_all(recipes, args, out)
    if not args.dry_run:
        summarize(args.table, recipes, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
