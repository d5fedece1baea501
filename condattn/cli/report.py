"""``condattn report RUN_DIR ...``: a table of finished runs (final = reported, best =
informational), optionally their test-error curves; a compare directory regenerates its summary."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from condattn.cli._common import UserError

__all__ = ["HELP", "add_arguments", "report_table", "run"]

HELP = "compare finished runs (table + plot)"


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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
