"""Files the evidence study's runs into ``benchmarks/results/evidence/``, and contrasts two studies.

``condattn compare`` writes a comparison directory (``compare.json``/``.md``/``.png``, one run
directory per variant and seed, with a checkpoint each). The study's record in the repository is
everything but the checkpoints:

    python benchmarks/evidence.py collect runs/evidence/e15 --name e15

copies ``compare.{json,md,png}``, the ``logs/`` and, per run, ``metrics.jsonl``,
``results.json``, ``config.json``, ``config.toml``, ``environment.json`` and ``curves.png`` to
``benchmarks/results/evidence/e15/``. It refuses a study with unfinished runs (``missing`` in
``compare.json``) unless ``--partial``.

    python benchmarks/evidence.py contrast runs/precision/bf16 runs/precision/fp32 \\
        --variant se_r --name precision_bf16_vs_fp32

compares one variant across two studies that differ in one setting (here system.precision), seed
by seed: the same statistics as ``condattn compare`` between variants
(:func:`condattn.experiments.stats.paired_difference`: the mean paired difference with its 95%
t-interval, paired-t and Welch p), written to ``benchmarks/results/evidence/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from condattn.experiments.stats import describe, paired_difference

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "evidence"
RUN_FILES = (
    "metrics.jsonl",
    "results.json",
    "config.json",
    "config.toml",
    "environment.json",
    "curves.png",
)
STUDY_FILES = ("compare.json", "compare.md", "compare.png")


def _read_compare(study: Path) -> dict[str, Any]:
    path = study / "compare.json"
    if not path.is_file():
        raise SystemExit(f"{study}: no compare.json (run `condattn compare ... --out {study}`)")
    return json.loads(path.read_text())


def collect(study: Path, name: str, *, partial: bool = False, out: Path = OUT) -> Path:
    """Copies ``study`` without its checkpoints to ``out / name``; returns that folder."""
    summary = _read_compare(study)
    if summary.get("missing") and not partial:
        raise SystemExit(
            f"{study}: unfinished runs {summary['missing']}; finish them (rerun the compare "
            "command) or pass --partial"
        )
    dest = out / name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in STUDY_FILES:
        if (study / f).is_file():
            shutil.copy2(study / f, dest / f)
    if (study / "logs").is_dir():
        shutil.copytree(study / "logs", dest / "logs")
    for variant in summary["variants"].values():
        for run in variant["runs"]:
            src, dst = study / run["run_dir"], dest / run["run_dir"]
            dst.mkdir(parents=True, exist_ok=True)
            for f in RUN_FILES:
                if (src / f).is_file():
                    shutil.copy2(src / f, dst / f)
    return dest


def _by_seed(summary: dict[str, Any], variant: str, where: Path) -> dict[int, float]:
    if variant not in summary["variants"]:
        raise SystemExit(f"{where}: no variant {variant!r}; it has {list(summary['variants'])}")
    return {r["seed"]: r["top1"] for r in summary["variants"][variant]["runs"]}


def contrast(a: Path, b: Path, *, variant: str, name: str, out: Path = OUT) -> dict[str, Any]:
    """``variant``'s top-1 in study ``a`` minus study ``b``, paired by seed."""
    sa, sb = _read_compare(a), _read_compare(b)
    xa, xb = _by_seed(sa, variant, a), _by_seed(sb, variant, b)
    only_a = sorted(set(sa["conditions"]["overrides"]) - set(sb["conditions"]["overrides"]))
    only_b = sorted(set(sb["conditions"]["overrides"]) - set(sa["conditions"]["overrides"]))
    res = {
        "variant": variant,
        "a": {"study": str(a), "differs_by": only_a, **describe(list(xa.values())), "top1": xa},
        "b": {"study": str(b), "differs_by": only_b, **describe(list(xb.values())), "top1": xb},
        "a_minus_b": paired_difference(xa, xb),
        "conditions": {k: v for k, v in sa["conditions"].items() if k != "overrides"},
        "overrides_common": sorted(
            set(sa["conditions"]["overrides"]) & set(sb["conditions"]["overrides"])
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{name}.md").write_text(_markdown(res))
    return res


def _fmt(x: float | None, f: str = ".2f") -> str:
    return "n/a" if x is None else format(x, f)


def _markdown(res: dict[str, Any]) -> str:
    a, b, d = res["a"], res["b"], res["a_minus_b"]
    ci = d["ci95"]
    c = res["conditions"]
    lines = [
        f"# {res['variant']}: {', '.join(a['differs_by']) or a['study']} vs "
        f"{', '.join(b['differs_by']) or b['study']}",
        "",
        f"Common settings: recipe {c.get('recipe')}, --set {' '.join(res['overrides_common'])}; "
        f"model {c.get('model')} {c.get('widths')}, {c.get('epochs')} epochs, "
        f"{c.get('num_train')} train / {c.get('num_test')} test images; device "
        f"{c.get('device_name')}, torch {c.get('torch')}, {c.get('threads')} thread(s) per run.",
        "",
        "| study | top-1 mean ± std (%) | n | per seed |",
        "|---|---:|---:|---|",
    ]
    for s in (a, b):
        per = ", ".join(
            f"{k}: {v:.2f}" for k, v in sorted(s["top1"].items(), key=lambda kv: int(kv[0]))
        )
        lines.append(
            f"| {', '.join(s['differs_by']) or s['study']} | {_fmt(s['mean'])} ± "
            f"{_fmt(s['std'])} | {s['n']} | {per} |"
        )
    lines += [
        "",
        f"Paired by seed, first minus second: {_fmt(d['mean'], '+.2f')} points, 95% interval "
        + (f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "n/a")
        + f", paired-t p = {_fmt(d['p'], '.3f')}, Welch p = {_fmt(d['p_welch'], '.3f')}"
        + f" ({d['n_pairs']} pairs){'; ' + d['note'] if d['note'] else ''}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="copy a compare study without checkpoints")
    c.add_argument("study", type=Path)
    c.add_argument("--name", required=True)
    c.add_argument("--partial", action="store_true", help="allow unfinished runs")
    c.add_argument("--out", type=Path, default=OUT)
    t = sub.add_parser("contrast", help="one variant across two studies, paired by seed")
    t.add_argument("a", type=Path)
    t.add_argument("b", type=Path)
    t.add_argument("--variant", required=True)
    t.add_argument("--name", required=True)
    t.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.cmd == "collect":
        print("wrote", collect(args.study, args.name, partial=args.partial, out=args.out))
    else:
        contrast(args.a, args.b, variant=args.variant, name=args.name, out=args.out)
        print((args.out / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
