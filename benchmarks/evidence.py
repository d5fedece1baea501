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

    python benchmarks/evidence.py trend benchmarks/results/evidence/e15 \
        benchmarks/results/evidence/e30 --name budget

puts studies of the same recipe at different budgets side by side: each variant's mean top-1
with its 95% t-interval, and each seed-paired difference of ``compare.json`` with its interval,
against the number of epochs, in ``<name>.{json,md,png}``. It refuses studies whose settings differ
in anything but the budget (``optim.epochs``, ``optim.milestones``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from condattn.experiments.stats import CONFIDENCE, describe, paired_difference

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


# What may differ between the studies of one trend: the budget and nothing else.
BUDGET_KEYS = ("optim.epochs", "optim.milestones")


def _mean_interval(values: list[float]) -> list[float] | None:
    """Student's t-interval of the mean of ``values`` (None with fewer than two or no spread)."""
    from scipy import stats

    if len(values) < 2 or max(values) == min(values):
        return None
    lo, hi = stats.t.interval(
        CONFIDENCE, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values)
    )
    return [float(lo), float(hi)]


def _settings(summary: dict[str, Any]) -> tuple[Any, ...]:
    c = summary["conditions"]
    rest = sorted(o for o in c["overrides"] if not o.startswith(BUDGET_KEYS))
    return (c["recipe"], c["model"], c["widths"], c["num_train"], c["num_test"], *rest)


def trend(studies: list[Path], *, name: str, out: Path = OUT) -> dict[str, Any]:
    """The studies' variants and paired differences against their budget (epochs)."""
    summaries = [_read_compare(s) for s in studies]
    if len(summaries) < 2:
        raise SystemExit("trend needs at least two studies (e.g. e15 and e30)")
    first = _settings(summaries[0])
    for study, summary in zip(studies[1:], summaries[1:], strict=True):
        if (settings := _settings(summary)) != first:
            raise SystemExit(
                f"{study} differs from {studies[0]} in more than the budget "
                f"({', '.join(BUDGET_KEYS)}): {settings} != {first}"
            )
    rows = []
    for study, summary in sorted(
        zip(studies, summaries, strict=True), key=lambda ss: ss[1]["conditions"]["epochs"]
    ):
        variants = {}
        for v, info in summary["variants"].items():
            top1 = [r["top1"] for r in info["runs"]]
            variants[v] = {**describe(top1), "ci95": _mean_interval(top1), "top1": top1}
        rows.append(
            {
                "study": str(study),
                "epochs": summary["conditions"]["epochs"],
                "missing": summary.get("missing", []),
                "variants": variants,
                "differences": summary["differences"],
            }
        )
    res = {"rows": rows, "conditions": dict(summaries[0]["conditions"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{name}.md").write_text(_trend_markdown(res))
    _trend_plot(res, out / f"{name}.png")
    return res


def _interval(ci: list[float] | None, f: str = "+.2f") -> str:
    return f"[{ci[0]:{f}}, {ci[1]:{f}}]" if ci else "n/a"


def _trend_markdown(res: dict[str, Any]) -> str:
    c = res["conditions"]
    lines = [
        "# Accuracy and paired differences against the budget",
        "",
        f"Recipe {c.get('recipe')}, model {c.get('model')} {c.get('widths')}, "
        f"{c.get('num_train')} train / {c.get('num_test')} test images; device "
        f"{c.get('device_name')}, torch {c.get('torch')}. Test top-1 (%) of the final epoch; "
        "intervals are Student's 95% t-intervals (of the mean, and of the seed-paired mean "
        "difference).",
        "",
        "| epochs | variant | n | top-1 mean ± std | 95% interval | per seed |",
        "|---:|---|---:|---:|---|---|",
    ]
    for row in res["rows"]:
        for v, s in row["variants"].items():
            lines.append(
                f"| {row['epochs']} | {v} | {s['n']} | {_fmt(s['mean'])} ± {_fmt(s['std'])} | "
                f"{_interval(s['ci95'], '.2f')} | {', '.join(f'{x:.2f}' for x in s['top1'])} |"
            )
    lines += ["", "| epochs | difference | mean (points) | 95% interval | paired-t p | pairs |"]
    lines.append("|---:|---|---:|---|---:|---:|")
    for row in res["rows"]:
        for d in row["differences"]:
            lines.append(
                f"| {row['epochs']} | {d['a']} − {d['b']} | {_fmt(d['mean'], '+.2f')} | "
                f"{_interval(d['ci95'])} | {_fmt(d['p'], '.3f')} | {d['n_pairs']} |"
            )
    unfinished = [
        f"{r['epochs']} epochs: {', '.join(r['missing'])}" for r in res["rows"] if r["missing"]
    ]
    if unfinished:
        lines += ["", f"Unfinished runs: {'; '.join(unfinished)}."]
    return "\n".join(lines) + "\n"


def _trend_plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epochs"] for row in res["rows"]]
    names = list(dict.fromkeys(v for row in res["rows"] for v in row["variants"]))
    pairs = list(dict.fromkeys((d["a"], d["b"]) for row in res["rows"] for d in row["differences"]))
    for panel, keys, get in (
        (left, names, lambda row, k: row["variants"].get(k)),
        (
            right,
            pairs,
            lambda row, k: next((d for d in row["differences"] if (d["a"], d["b"]) == k), None),
        ),
    ):
        for i, key in enumerate(keys):
            xs, ys, err = [], [], [[], []]
            for x, row in zip(epochs, res["rows"], strict=True):
                s = get(row, key)
                if s is None or s["mean"] is None:
                    continue
                shift = (i - (len(keys) - 1) / 2) * 0.3  # keep the error bars apart
                xs.append(x + shift)
                ys.append(s["mean"])
                ci = s["ci95"] or [s["mean"], s["mean"]]
                err[0].append(s["mean"] - ci[0])
                err[1].append(ci[1] - s["mean"])
            label = key if isinstance(key, str) else f"{key[0]} − {key[1]}"
            panel.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=label)
        panel.set_xlabel("epochs")
        panel.set_xticks(epochs)
        panel.legend()
        panel.grid(alpha=0.3)
    left.set_ylabel("test top-1 (%), mean with 95% interval")
    right.set_ylabel("paired difference (points), 95% interval")
    right.axhline(0.0, color="black", linewidth=0.8)
    fig.suptitle(f"{res['conditions'].get('model')} {res['conditions'].get('widths')}: budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(x: float | None, f: str = ".2f") -> str:
    return "n/a" if x is None else format(x, f)


def _markdown(res: dict[str, Any]) -> str:
    a, b, d = res["a"], res["b"], res["a_minus_b"]
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
        + _interval(d["ci95"])
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
    b = sub.add_parser("trend", help="studies of one recipe at different budgets")
    b.add_argument("studies", type=Path, nargs="+")
    b.add_argument("--name", required=True)
    b.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.cmd == "collect":
        print("wrote", collect(args.study, args.name, partial=args.partial, out=args.out))
    else:
        if args.cmd == "trend":
            trend(args.studies, name=args.name, out=args.out)
        else:
            contrast(args.a, args.b, variant=args.variant, name=args.name, out=args.out)
        print((args.out / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
