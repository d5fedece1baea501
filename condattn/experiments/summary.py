"""The summary of a comparison: ``compare.json``, ``compare.md`` and ``compare.png``.

Everything is read back from the run directories (``results.json``, ``metrics.jsonl``,
``config.json``, ``environment.json``), so a summary can be regenerated at any time
(``condattn report OUT``) and always says under which conditions its numbers were measured:
model, data, epochs, device, torch version, threads and git SHA, as airbench's results do.

The reported top-1 of a run is its final epoch's test accuracy (as in ``results.json``). With a
val split (``data.val_fraction > 0``) the test top-1 at the epoch chosen on val is shown too. An
epoch chosen on the test set is never shown: picking it would flatter every variant.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from condattn._io import atomic_write_text, git_sha
from condattn.data.container import source_origin
from condattn.experiments.grid import CompareError, run_dir_for
from condattn.experiments.plots import plot_error_curves, plot_title
from condattn.experiments.stats import MOST_PAIRS, POWER, describe, paired_difference
from condattn.train.config import VARIANT_LABELS, VARIANTS

__all__ = [
    "PAIRS",
    "QUESTIONS",
    "find_grid",
    "is_compare_dir",
    "label",
    "refresh_summary",
    "render_markdown",
    "summarize",
    "write_summary",
]

# The differences of interest, (a, b) meaning a - b, and the question each answers:
# conditioning over heads alone (the paper's point), and each over the plain network.
PAIRS = (("se_r", "se_a"), ("se_r", "se"), ("se_a", "se"))
QUESTIONS = {
    ("se_r", "se_a"): "does the result help beyond the heads?",
    ("se_r", "se"): "does SE-R help over the plain network?",
    ("se_a", "se"): "do the heads alone help?",
}
# A named variant's base minus the variant answers the question of what the variant changes
# (condattn's controls, docs/howto-compare.md): keyed by (model key, value), value None = any.
CONTROL_QUESTIONS = {
    ("cond", "shuffled"): "does it have to be this image's result?",
    ("cond", "features"): "is the result better than richer information?",
    ("cond", "probs"): "does normalising T matter?",
    ("cond_mode", "film"): "does the way T enters matter?",
    ("cond_rank", None): "does projecting T to fewer values cost accuracy?",
    ("detach_cond", None): "does the attention's gradient into the heads matter?",
}


def label(variant: str) -> str:
    """The name tables and plots use: SE / SE-A / SE-R, or a named variant's own name."""
    return VARIANT_LABELS.get(variant, variant)


def _question(changed: Mapping[str, Any]) -> str:
    for key, value in changed.items():
        q = CONTROL_QUESTIONS.get((key, value)) or CONTROL_QUESTIONS.get((key, None))
        if q:
            return q
    keys = ", ".join(f"model.{k}={v!r}" for k, v in changed.items()) or "its recipe keys"
    return f"what does {keys} change?"


def _pairs(collected: Mapping[str, Any], variants: Sequence[str]) -> list[tuple[str, str, str]]:
    """(a, b, question) for every difference of interest present: :data:`PAIRS`, then each
    named variant against its base (``a`` = the base, e.g. SE-R − shuffled)."""
    runs = collected["runs"]
    out = [(a, b, QUESTIONS[a, b]) for a, b in PAIRS if a in variants and b in variants]
    for v in variants:
        if v in VARIANTS or not runs[v]:
            continue
        model = runs[v][0]["_config"]["model"]
        base = model["variant"]
        if base not in variants or not runs[base]:
            continue
        ref = runs[base][0]["_config"]["model"]
        changed = {k: x for k, x in model.items() if ref.get(k) != x}
        out.append((base, v, _question(changed)))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _read_history(path: Path) -> list[dict[str, Any]]:
    from condattn.train.metrics import read_jsonl

    return read_jsonl(path)


def _last_start(run_dir: Path) -> dict[str, Any]:
    """The environment of a run's last start (``environment.json``), or {}."""
    path = run_dir / "environment.json"
    if not path.is_file():
        return {}
    env = _read_json(path)
    return env["starts"][-1] if env.get("starts") else env


def _collect(out_dir: Path, variants: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per variant, the finished runs' numbers, histories, configs and environments."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    missing: list[str] = []
    for v in variants:
        for s in seeds:
            d = run_dir_for(out_dir, v, s)
            if not (d / "results.json").is_file():
                missing.append(str(d.relative_to(out_dir)))
                continue
            res = _read_json(d / "results.json")
            runs[v].append(
                {
                    "seed": s,
                    "top1": res["final"]["top1"],
                    "top5": res["final"]["top5"],
                    "val_chosen_top1": (res.get("val_chosen") or {}).get("top1"),
                    "val_chosen_epoch": (res.get("val_chosen") or {}).get("epoch"),
                    "run_dir": str(d.relative_to(out_dir)),
                    "_results": res,
                    "_config": _read_json(d / "config.json"),
                    "_env": _last_start(d),
                    "_history": _read_history(d / "metrics.jsonl"),
                }
            )
    return {"runs": runs, "missing": missing}


def _devices(collected, variants) -> dict[str, dict[str, list[int]]]:
    """Which runs ran on which device: ``{device name: {variant: [seeds]}}``. A study may reuse
    runs trained elsewhere (another machine, an earlier session); its conditions say so."""
    out: dict[str, dict[str, list[int]]] = {}
    for v in variants:
        for r in collected["runs"][v]:
            name = str(r["_env"].get("device_name"))
            out.setdefault(name, {}).setdefault(v, []).append(r["seed"])
    return out


def _one_or_all(values: Sequence[Any]) -> Any:
    """The common value, or the sorted distinct values when the runs disagree (None if none)."""
    distinct = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    if len(distinct) <= 1:
        return distinct[0] if distinct else None
    return sorted(distinct, key=str)


def _conditions(collected, *, variants, seeds, recipe, overrides) -> dict[str, Any]:
    """What the numbers were measured under, read from the runs themselves."""
    rs = [r for v in variants for r in collected["runs"][v]]

    def each(get) -> Any:
        return _one_or_all([get(r) for r in rs])

    return {
        "recipe": None if recipe is None else str(recipe),
        "overrides": list(overrides),
        "variants": list(variants),
        "seeds": list(seeds),
        "model": each(lambda r: r["_results"]["arch"]),
        "widths": each(lambda r: r["_config"]["model"]["widths"]),
        "aux_weights": {
            v: _one_or_all([r["_results"]["aux_weights"] for r in collected["runs"][v]])
            for v in variants
        },
        "data_source": each(lambda r: source_origin(r["_results"]["data_source"])),
        "num_train": each(lambda r: r["_results"]["num_train"]),
        "num_test": each(lambda r: r["_results"]["num_test"]),
        "epochs": each(lambda r: r["_results"]["epochs"]),
        "batch_size": each(lambda r: r["_config"]["optim"]["batch_size"]),
        "device": each(lambda r: r["_env"].get("device")),
        "device_name": each(lambda r: r["_env"].get("device_name")),
        "devices": _devices(collected, variants),
        "torch": each(lambda r: r["_env"].get("torch")),
        "threads": each(lambda r: r["_env"].get("threads")),
        "git": each(lambda r: r["_env"].get("git_sha")),
        "summarised": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_sha()},
    }


def summarize(
    out_dir: str | os.PathLike[str],
    *,
    variants: Sequence[str],
    seeds: Sequence[int],
    recipe: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, list[list[dict[str, Any]]]]]:
    """The content of ``compare.json`` and, per variant, the runs' metrics.jsonl histories.

    ``variants[v]`` holds ``n``, ``mean``, ``std`` (:func:`~condattn.experiments.stats.describe`
    of the final top-1) and the runs; ``differences`` holds one
    :func:`~condattn.experiments.stats.paired_difference` per pair of :data:`PAIRS` present and
    per named variant against its base, each with the question it answers.

    Raises:
        CompareError: no run of the grid has finished.
    """
    out_dir = Path(out_dir)
    collected = _collect(out_dir, variants, seeds)
    if not any(collected["runs"].values()):
        raise CompareError(f"{out_dir}: no finished run of {list(variants)} x seeds {list(seeds)}")
    summary: dict[str, Any] = {
        "conditions": _conditions(
            collected, variants=variants, seeds=seeds, recipe=recipe, overrides=overrides
        ),
        "reported": "final epoch's test top-1 (%); also at the val-chosen epoch with a val split",
        "variants": {},
        "differences": [],
        "missing": collected["missing"],
    }
    for v in variants:
        rs = collected["runs"][v]
        summary["variants"][v] = {
            **describe([r["top1"] for r in rs]),
            "top5_mean": describe([r["top5"] for r in rs])["mean"],
            "val_chosen_top1_mean": _chosen_mean(rs),
            "runs": [{k: x for k, x in r.items() if not k.startswith("_")} for r in rs],
        }
    for a, b, question in _pairs(collected, variants):
        top1 = {v: {r["seed"]: r["top1"] for r in collected["runs"][v]} for v in (a, b)}
        diff = paired_difference(top1[a], top1[b])
        summary["differences"].append({"a": a, "b": b, "question": question, **diff})
    histories = {v: [r["_history"] for r in collected["runs"][v]] for v in variants}
    return summary, histories


def _chosen_mean(rs: Sequence[Mapping[str, Any]]) -> float | None:
    """The mean test top-1 at the val-chosen epochs, or None unless every run has a val split."""
    values = [r["val_chosen_top1"] for r in rs]
    if not values or any(v is None for v in values):
        return None
    return describe(values)["mean"]


# --- compare.md --------------------------------------------------------------------------------


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _sentence(d: Mapping[str, Any]) -> str:
    """One plain sentence on whether the difference's interval excludes zero."""
    a, b = label(d["a"]), label(d["b"])
    head = f"{a} − {b}"
    if not d["n_pairs"]:
        return f"{head}: no seed has finished runs of both."
    mean = f"{d['mean']:+.2f} points"
    if d["ci95"] is None and d["n_pairs"] > 1 and d["mean"] == 0:
        return f"{head}: the same top-1 for every seed: no difference in these runs."
    if d["ci95"] is None:
        return (
            f"{head}: {mean} over {d['n_pairs']} seed(s), but {d['note']}, so it cannot be told "
            "apart from seed noise; run more seeds (e.g. --seeds 0,1,2) for an interval."
        )
    lo, hi = d["ci95"]
    if lo <= 0 <= hi:
        return (
            f"{head}: {mean}, 95% CI {_ci(d['ci95'])} includes zero: not measurable at this "
            f"budget (compatible with anything from a {-lo:.2f}-point loss to a {hi:.2f}-point "
            f"gain; not evidence of no effect).{_plan(d)}"
        )
    verb = "beats" if d["mean"] > 0 else "trails"
    return (
        f"{head}: {mean}, 95% CI {_ci(d['ci95'])} excludes zero: {a} {verb} {b} by "
        f"{abs(d['mean']):.2f} points at this budget (paired t p = {_p(d['p'])}, "
        f"{d['n_pairs']} seeds)."
    )


def _plan(d: Mapping[str, Any]) -> str:
    """How many seed pairs would measure this difference (stats.pairs_for_power), as a clause."""
    n = d.get("pairs_80")  # compare.json files written before it have no pairs_80
    if n is None or n <= d["n_pairs"]:
        return ""
    if n > MOST_PAIRS:
        return (
            f" A difference this small would need more than {MOST_PAIRS} seed pairs to be "
            f"measured with {POWER:.0%} power."
        )
    return (
        f" If this mean and spread held, about {n} seed pairs would measure it ({POWER:.0%} "
        "power; a plan, not a promise: the mean moves as seeds are added)."
    )


def _list(x: Any) -> str:
    return ", ".join(map(str, x)) if isinstance(x, list) else str(x)


def _devices_text(c: Mapping[str, Any]) -> str:
    """``AMD EPYC`` when every run used one device; else each device with its runs."""
    devices = c.get("devices") or {}
    if len(devices) <= 1:
        return str(c["device_name"])
    return "; ".join(
        f"{name}: " + ", ".join(f"{v} seed(s) {_list(seeds)}" for v, seeds in runs.items())
        for name, runs in devices.items()
    )


def _conditions_text(c: Mapping[str, Any]) -> str:
    widths = f" (widths {c['widths']})" if c["widths"] else ""
    sets = f", --set {' '.join(c['overrides'])}" if c["overrides"] else ""
    return (
        f"**Conditions.** Model {c['model']}{widths}, {c['epochs']} epoch(s), batch "
        f"{c['batch_size']}; data: {c['data_source']}, {c['num_train']} train / {c['num_test']} "
        f"test images. Device {c['device']} ({_devices_text(c)}), torch {c['torch']}, "
        f"{c['threads']} thread(s) per run, git {c['git']}. Seeds {_list(c['seeds'])}; recipe "
        f"{c['recipe']}{sets}."
    )


def render_markdown(summary: Mapping[str, Any]) -> str:
    """compare.md: conditions, the per-variant table, the differences and one sentence each."""
    c = summary["conditions"]
    names = " vs ".join(label(v) for v in summary["variants"])
    lines = [
        f"# {names}: {c['model']}",
        "",
        _conditions_text(c),
        "Top-1 is the final epoch's test accuracy (the reported number); the last column is the "
        "test top-1 at the epoch chosen on the val split held out of train (– without one: "
        "no epoch is chosen on the test set). ± is the standard deviation over seeds.",
        "",
        "| variant | top-1 (%) | n | top-5 (%) | top-1 at the val-chosen epoch (%) |",
        "|---|---|---|---|---|",
    ]
    for v, s in summary["variants"].items():
        spread = f" ± {s['std']:.2f}" if s["std"] is not None else " (one seed: no std)"
        top1 = f"{_num(s['mean'])}{spread}" if s["n"] else "–"
        lines.append(
            f"| {label(v)} | {top1} | {s['n']} | {_num(s['top5_mean'])} | "
            f"{_num(s['val_chosen_top1_mean'])} |"
        )
    if summary["differences"]:
        lines += [
            "",
            "Differences in top-1, paired by seed (same data order and init per seed); 95% "
            "t-interval and paired-t p, with Welch's unpaired p as a check:",
            "",
            "| difference | what it answers | mean (points) | 95% CI | paired-t p | Welch p | "
            "pairs |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in summary["differences"]:
            lines.append(
                f"| {label(d['a'])} − {label(d['b'])} | {d.get('question', '')} | "
                f"{_num(d['mean'], '+.2f')} | "
                f"{_ci(d['ci95'])} | {_p(d['p'])} | {_p(d['p_welch'])} | {d['n_pairs']} |"
            )
        lines += ["", *(f"- {_sentence(d)}" for d in summary["differences"])]
    if summary["missing"]:
        lines += ["", f"Not finished (left out): {', '.join(summary['missing'])}."]
    return "\n".join(lines) + "\n"


# --- files -------------------------------------------------------------------------------------


def write_summary(
    out_dir: str | os.PathLike[str],
    *,
    variants: Sequence[str],
    seeds: Sequence[int],
    recipe: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Writes ``compare.json``, ``compare.md`` and ``compare.png`` into ``out_dir``; the summary."""
    out_dir = Path(out_dir)
    summary, histories = summarize(
        out_dir, variants=variants, seeds=seeds, recipe=recipe, overrides=overrides
    )
    atomic_write_text(out_dir / "compare.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "compare.md", render_markdown(summary))
    c = summary["conditions"]
    named = {label(v): runs for v, runs in histories.items()}
    plot_error_curves(named, out_dir / "compare.png", title=plot_title(c))
    return summary


def is_compare_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a comparison directory (compare.json, or ``<variant>/seed<k>`` runs)."""
    p = Path(path)
    if (p / "compare.json").is_file():
        return True
    return not (p / "results.json").exists() and bool(find_grid(p)["seeds"])


def find_grid(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The grid of a comparison directory (variants, seeds, recipe, overrides).

    From compare.json's conditions when there is one, else from the ``<variant>/seed<k>`` folders.
    """
    p = Path(out_dir)
    if (p / "compare.json").is_file():
        c = _read_json(p / "compare.json")["conditions"]
        keys = ("variants", "seeds", "recipe", "overrides")
        return {k: c[k] for k in keys}
    named = (
        sorted(
            d.name
            for d in p.iterdir()
            if d.is_dir() and d.name not in VARIANTS and any(d.glob("seed*/config.json"))
        )
        if p.is_dir()
        else []
    )
    variants = [v for v in VARIANTS if (p / v).is_dir()] + named
    seeds = {
        int(d.name[4:])
        for v in variants
        for d in (p / v).glob("seed*")
        if d.is_dir() and d.name[4:].isdigit()
    }
    return {"variants": variants, "seeds": sorted(seeds), "recipe": None, "overrides": []}


def refresh_summary(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Rewrites a comparison directory's summary files from its run directories (``report``)."""
    return write_summary(out_dir, **find_grid(out_dir))
