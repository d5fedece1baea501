"""The zoo sweep's report: N/M per zoo, per route and per family, failures, every model run."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import _common as C

_NOT_RUN = ("no swappable attention", "not a CNN")


def family(name: str) -> str:
    """A model's family: its name's leading letters (``resnet50d`` -> ``resnet``), past a
    ``tf_`` / ``tv_`` / ``gluon_`` / ``legacy_`` style prefix."""
    parts = name.split("_")
    if len(parts) > 1 and parts[0] in ("tf", "tv", "gluon", "legacy", "ssl", "swsl", "ig"):
        parts = parts[1:]
    m = re.match(r"[a-z]+", parts[0])
    return m.group(0) if m else parts[0]


def summarize(rows: Iterable[dict[str, Any]], listed: dict[str, int]) -> dict[str, dict]:
    """Per zoo: models listed, with attention, plain CNNs, left out (not CNNs), over the cap,
    run, passed, failed."""
    zero = {"attention": 0, "plain": 0, "not_cnn": 0, "over_cap": 0, "run": 0}
    out = {z: {"listed": n, **zero, "passed": 0, "failed": 0} for z, n in listed.items()}
    for r in rows:
        s = out[r["zoo"]]
        if r["status"] == "skip" and r["reason"].startswith(_NOT_RUN):
            s["not_cnn"] += r["reason"].startswith("not a CNN")
            continue
        s["attention" if r.get("kinds") else "plain"] += 1
        if r["status"] == "skip":
            s["over_cap"] += 1
            continue
        s["run"] += 1
        s["passed" if r["status"] == "pass" else "failed"] += 1
    return out


def _fmt_routes(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(r.get("routes", {}).items())) or "-"


def _fmt_positions(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def _families(ran: list[dict[str, Any]]) -> list[list[Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ran:
        groups[(r["zoo"], family(r["model"]))].append(r)
    table = []
    for (zoo, fam), rs in sorted(groups.items()):
        routes = Counter(r.get("route", "direct") for r in rs)
        positions: Counter = Counter()
        for r in rs:
            positions.update(r.get("positions", {}))
        passed = sum(r["status"] == "pass" for r in rs)
        secs = sum(r.get("total_s", 0) for r in rs)
        table.append(
            [zoo, fam, f"{passed}/{len(rs)}", _fmt_positions(dict(routes)),
             _fmt_positions(dict(positions)), f"{secs:.0f}"]
        )  # fmt: skip
    return table


def _header(payload: dict[str, Any]) -> list[str]:
    s = payload["settings"]
    cap = "none (--all)" if s["max_params"] is None else f"{s['max_params'] / 1e6:g} M params"
    plain = "" if s.get("plain", True) else " Plain CNNs left out (--attention-only)."
    return [
        f"Conditions: {C.conditions_line(payload['conditions'])}",
        "",
        'Route `direct` (the model has swappable attention): convert with `aux_at="auto"`, '
        '`init="zeros"`. Route `add_attention` (a CNN classifier without attention: two or more '
        'downsampling layers): `add_attention(kind="se", init="identity")`, then the same '
        "convert. Both in train mode, then compared with the original in eval mode (the result "
        f"must follow `.eval()`); fp32, batch 2; pass: two eval calls agree exactly and "
        f"max|a-b| / max|a| <= {s['tol']:g}. Sizes tried: {s['sizes']} px, then the model's "
        f"default. Size cap: {cap}. Per-model timeout {s['timeout']:g} s.{plain}",
        "",
        "Left out as not CNN classifiers: models without attention that have fewer than two "
        "downsampling layers (`Conv2d` or pooling with a stride over 1: a pure transformer has "
        "one, its patch embedding), or whose traced trunk has conv blocks at fewer than two "
        "resolutions (`add_attention` finds no conv stages).",
        "",
    ]


def markdown(payload: dict[str, Any]) -> str:
    """The sweep's markdown report."""
    summary, rows = payload["summary"], payload["models"]
    lines = _header(payload)
    table = [
        [zoo, z["listed"], z["not_cnn"], z["attention"], z["plain"], z["over_cap"],
         f"{z['passed']}/{z['run']}"]
        for zoo, z in summary.items()
    ]  # fmt: skip
    heads = ["zoo", "models", "not CNN", "with attention", "without", "over cap", "preserving"]
    lines.append(C.md_table(heads, table))
    ran = [r for r in rows if r["status"] in ("pass", "fail")]
    for route in ("direct", "add_attention"):
        rs = [r for r in ran if r.get("route", "direct") == route]
        per_zoo = Counter(r["zoo"] for r in rs)
        ok = Counter(r["zoo"] for r in rs if r["status"] == "pass")
        text = ", ".join(f"{z} {ok[z]}/{n}" for z, n in sorted(per_zoo.items())) or "none run"
        lines.append(f"\n- route `{route}`: {text}")
    fails = [r for r in rows if r["status"] == "fail"]
    lines += ["", f"## Failures ({len(fails)})", ""]
    if fails:
        fail_rows = [[r["zoo"], r["model"], r.get("route", "-"), r["reason"]] for r in fails]
        lines.append(C.md_table(["zoo", "model", "route", "reason"], fail_rows, align="llll"))
    else:
        lines.append("None.")
    lines += ["", f"## Per family ({len(ran)} models run)", ""]
    lines.append(
        C.md_table(
            ["zoo", "family", "preserving", "route", "positions added", "total s"],
            _families(ran),
            align="lllllr",
        )
    )
    lines += ["", f"## Every model run ({len(ran)})", ""]
    lines.append(_every_model(ran))
    return "\n".join(lines)


def _every_model(ran: list[dict[str, Any]]) -> str:
    headers = ["zoo", "model", "M params", "px", "attention", "route", "positions", "fed via",
               "heads", "fed", "graphs", "rel diff", "convert s", "total s", "result"]  # fmt: skip
    return C.md_table(
        headers,
        [
            [
                r["zoo"],
                r["model"],
                f"{r.get('params', 0) / 1e6:.1f}",
                r.get("size", "-"),
                " ".join(r.get("kinds", [])) or "(added SE)",
                r.get("route", "direct"),
                _fmt_positions(r.get("positions", {})),
                _fmt_routes(r),
                " ".join(r.get("heads", [])) or "-",
                r.get("fed", "-"),
                r.get("graphs", "-"),
                f"{r['rel_diff']:.1e}" if "rel_diff" in r else "-",
                f"{r['convert_s']:.1f}" if "convert_s" in r else "-",
                f"{r.get('total_s', 0):.1f}",
                r["status"],
            ]
            for r in ran
        ],
        align="lllrllllllllrrl",
    )
