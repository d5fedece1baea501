"""The paper's tables on the grid: ``condattn table N --seeds K`` under any launcher.

A recipe belongs to table N when its ``[paper] tables`` lists N (so Table 4 reuses the SE and
SE-R runs of Table 3 when both share an OUT). Every recipe x seed is an ordinary grid run,
``OUT/<recipe>/seed<k>/``, reused when finished and resumed when killed, and executed by a
launcher (:mod:`condattn.experiments.launchers`) like a ``compare`` grid. The summary,
``OUT/table<N>.md`` and ``.json``, reports the FINAL-epoch test top-1 (mean ± sample std over
the seeds that finished) next to the paper's number, and, for runs with a val split
(``--set data.val_fraction=0.1``), the test top-1 at the epoch chosen on val. An epoch chosen on
the test set is never reported.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condattn.experiments.grid import CompareError, GridRun, plan_lines, run_grid
from condattn.experiments.launchers import prints_own_dry_run
from condattn.train.recipe import list_recipes, load_recipe

__all__ = ["plan_table", "run_table", "summarize_table", "table_recipes"]


def table_recipes(table: str, root: str | os.PathLike[str]) -> list[tuple[str, Any]]:
    """``(relative path, config)`` of the recipes under ``root`` whose ``paper.tables`` list it.

    Raises:
        CompareError: no recipe belongs to ``table`` (the message lists the tables that have some).
    """
    root = Path(root)
    found = [(n, load_recipe(root / n)) for n in list_recipes(root)]
    out = [(n, cfg) for n, cfg in found if str(table) in cfg.paper.tables]
    if not out:
        valid = sorted({t for _, cfg in found for t in cfg.paper.tables}, key=int)
        raise CompareError(
            f"no recipe for table {table!r}; tables with recipes: {', '.join(valid)}"
        )
    return out


def plan_table(
    table: str,
    *,
    seeds: int,
    out_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    threads: int = 0,
    root: str | os.PathLike[str],
) -> list[GridRun]:
    """The table's runs, seed-major: ``OUT/<recipe stem>/seed<k>`` for k in 0..seeds-1."""
    if seeds < 1:
        raise CompareError(f"--seeds must be >= 1 (seeds 0..N-1 per recipe), got {seeds}")
    own = ["system.progress=off"]
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    if threads and not keys & {"system.threads", "threads"}:
        own.append(f"system.threads={threads}")
    recipes = table_recipes(table, root)
    runs = []
    for seed in range(seeds):
        for name, cfg in recipes:
            cfg = load_recipe(Path(root) / name, [*overrides, *own, f"system.seed={seed}"])
            run_dir = Path(out_dir) / Path(name).stem / f"seed{seed}"
            runs.append(GridRun(variant=cfg.model.variant, seed=seed, cfg=cfg, run_dir=run_dir))
    return runs


def run_table(
    table: str,
    *,
    seeds: int,
    out_dir: str | os.PathLike[str],
    root: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    synthetic: bool = False,
    data_root: str | None = None,
    launcher: Any,
    dry_run: bool = False,
) -> dict[str, Any] | None:
    """Trains (or reuses) the table's runs under ``launcher``, then writes the summary.

    Returns the summary (None for a dry run, which prints what would run). Raises like
    :func:`~condattn.experiments.run_grid` (``GridPending`` while runs are queued or running).
    """
    runs = plan_table(
        table,
        seeds=seeds,
        out_dir=out_dir,
        overrides=overrides,
        threads=getattr(launcher, "threads", 0),
        root=root,
    )
    if prints_own_dry_run(launcher):  # the array job it would submit
        launcher.launch(runs, states={}, synthetic=synthetic, data_root=data_root, data=None)
        return None
    if dry_run:
        print("\n".join(plan_lines(runs, launcher.name)), flush=True)
        return None
    run_grid(runs, synthetic=synthetic, data_root=data_root, launcher=launcher)
    return summarize_table(table, runs, seeds=seeds, overrides=overrides, out_dir=out_dir)


def summarize_table(
    table: str,
    runs: Sequence[GridRun],
    *,
    seeds: int,
    overrides: Sequence[str],
    out_dir: str | os.PathLike[str],
) -> dict[str, Any]:
    """Writes ``OUT/table<N>.md`` and ``.json`` from the finished runs; returns the JSON."""
    import json

    import torch

    by_recipe: dict[str, list[GridRun]] = {}
    for r in runs:
        by_recipe.setdefault(r.run_dir.parent.name, []).append(r)
    rows = []
    for name, rs in by_recipe.items():
        res = [
            json.loads((r.run_dir / "results.json").read_text())
            for r in rs
            if (r.run_dir / "results.json").is_file()
        ]
        finals = [x["final"]["top1"] for x in res]
        n, paper = len(finals), rs[0].cfg.paper.top1
        mean = statistics.fmean(finals) if n else None
        rows.append(
            {
                "recipe": name,
                "row": rs[0].cfg.paper.row,
                "paper": paper,
                "n": n,
                "mean": mean,
                "std": statistics.stdev(finals) if n > 1 else (0.0 if n else None),
                "finals": finals,
                "val_chosen_mean": _val_chosen_mean(res),
                "delta": (mean - paper) if n and paper else None,
            }
        )
    summary = {
        "table": str(table),
        "seeds": seeds,
        "overrides": list(overrides),
        "reported": "final-epoch test top-1, mean ± sample std over seeds",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    lines = [
        f"# Table {table}: reproduction vs paper",
        "",
        f"Final-epoch test top-1 (%), mean ± std over the seeds that finished (of {seeds}); "
        f"torch {torch.__version__}; overrides: {', '.join(overrides) or 'none'}.",
        "",
        "| row | recipe | paper | ours (mean ± std) | n | Δ | val-chosen epoch's (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = f"{r['mean']:.2f} ± {r['std']:.2f}" if r["n"] else "-"
        delta = f"{r['delta']:+.2f}" if r["delta"] is not None else "-"
        vc = r["val_chosen_mean"]
        best = f"{vc:.2f}" if vc is not None else "-"
        paper = f"{r['paper']:.2f}" if r["paper"] else "-"
        lines.append(
            f"| {r['row']} | {r['recipe']} | {paper} | {ours} | {r['n']} | {delta} | {best} |"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary["markdown"] = "\n".join(lines) + "\n"
    (out / f"table{table}.md").write_text(summary["markdown"])
    (out / f"table{table}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _val_chosen_mean(results: list[dict]) -> float | None:
    """The mean test top-1 at the val-chosen epoch, when every run had a val split (else None:
    old results' test-chosen ``best`` is never shown)."""
    chosen = [r["val_chosen"]["top1"] for r in results if r.get("val_chosen")]
    return statistics.fmean(chosen) if results and len(chosen) == len(results) else None
