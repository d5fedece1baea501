"""Paper Tables 1 and 2: parameters and MACs of SE, SE-A and SE-R ResNets, beside the paper's.

- SE: ``create_model("se_resnet{34,50,101}", num_classes=100)`` (r=8, the paper's CIFAR layout);
- SE-A: ``condattn.convert(se, conditioned=False)`` (aux heads after layer2 and layer3 only);
- SE-R: ``condattn.convert(se)`` (heads, and T fed to every SE block after them).

MACs of one ``1x3x32x32`` forward pass under three rule sets (see ``condattn.profiling``):
``paper`` (thop 0.0.31's rules, the paper's tool), today's ``thop``, and ``flop_counter``
(``torch.utils.flop_counter``, FLOPs / 2, matmul-like ops only).

A second table does the same for the CBAM, coordinate-attention and ECA ResNets, which the
paper does not have. The script exits with status 1 when an SE or SE-R number differs from the
paper's at 3 decimals.

    python benchmarks/params_macs.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import _common as C
import torch

import condattn
from condattn.models import create_model
from condattn.train.config import VARIANT_LABELS

# Paper Table 1 (params, M) and Table 2 (MACs, G) at r=8, input 1x3x32x32.
PAPER: dict[tuple[int, str], tuple[float, float]] = {
    (34, "se"): (21.655, 1.163),
    (34, "se_r"): (26.145, 1.169),
    (50, "se"): (28.779, 1.315),
    (50, "se_r"): (33.531, 1.323),
    (101, "se"): (52.273, 2.538),
    (101, "se_r"): (57.243, 2.546),
}
VARIANTS = ("se", "se_a", "se_r")
LABEL = VARIANT_LABELS
FAMILIES = {"cbam": "cbam_resnet", "coord": "ca_resnet", "eca": "eca_resnet"}
FAMILY_LABEL = {"cbam": "CBAM", "coord": "CoordAttn", "eca": "ECA"}


def variants_of(base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """base, A (heads only) and R (heads + conditioned attention), as in the paper."""
    return {
        "se": base,
        "se_a": condattn.convert(base, conditioned=False),
        "se_r": condattn.convert(base),
    }


def count(model: torch.nn.Module, rules: Sequence[str]) -> dict[str, int]:
    out = {"params": condattn.count_params(model)}
    for r in rules:
        out[f"macs_{r}"] = condattn.count_macs(model, (1, 3, 32, 32), rules=r)
    return out


def _rel(ours: float, paper: float | None) -> str:
    return "-" if paper is None else f"{(ours - paper) / paper * 100:+.3f}%"


def _fmt_paper(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[34, 50, 101])
    p.add_argument("--families", nargs="*", default=list(FAMILIES), help="cbam coord eca")
    p.add_argument(
        "--family-depths", type=int, nargs="+", default=[50], help="depths for the 2nd table"
    )
    p.add_argument("--rules", nargs="+", default=["paper", "thop", "flop_counter"])
    p.add_argument("--widths", type=int, nargs=4, default=None, help="stage widths (smoke)")
    p.add_argument("--out", default=None, help=f"results folder (default: {C.RESULTS})")
    p.add_argument("--smoke", action="store_true", help="depth 34 at tiny widths, no 2nd table")
    args = p.parse_args(argv)
    if args.smoke:
        args.depths, args.widths, args.family_depths = [18], [8, 8, 16, 16], [18]
        args.families = ["eca"]
    if "paper" not in args.rules:
        args.rules = ["paper", *args.rules]
    kw = {"num_classes": 100, "r": 8}
    if args.widths:
        kw["widths"] = tuple(args.widths)
    device = torch.device("cpu")
    cond = C.conditions(device, input="1x3x32x32", r=8, num_classes=100, aux_at="layer2,layer3")
    print(C.conditions_line(cond), flush=True)
    compare = not args.widths  # the paper's numbers only apply to full-width models

    # --- Table 1 + 2 ----------------------------------------------------------------------
    rows, records, mismatches = [], [], []
    for depth in args.depths:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        models = variants_of(create_model(f"se_resnet{depth}", **kw))
        for v, m in models.items():
            c = count(m, args.rules)
            paper = PAPER.get((depth, v)) if compare else None
            pp, pm = paper if paper else (None, None)
            ours_p, ours_m = c["params"] / 1e6, c["macs_paper"] / 1e9
            ok = None
            if paper is not None:
                ok = f"{ours_p:.3f}" == f"{pp:.3f}" and f"{ours_m:.3f}" == f"{pm:.3f}"
                if not ok:
                    mismatches.append(f"{LABEL[v]}-ResNet{depth}")
            records.append(
                {
                    "depth": depth,
                    "variant": v,
                    **c,
                    "paper_params_M": pp,
                    "paper_macs_G": pm,
                    "match_3dp": ok,
                }
            )
            rows.append(
                [
                    f"{LABEL[v]}-ResNet{depth}",
                    f"{ours_p:.3f}",
                    _fmt_paper(pp),
                    _rel(ours_p, pp),
                    f"{ours_m:.3f}",
                    _fmt_paper(pm),
                    _rel(ours_m, pm),
                    *[f"{c[f'macs_{r}'] / 1e9:.3f}" for r in args.rules if r != "paper"],
                    {None: "-", True: "yes", False: "**NO**"}[ok],
                ]
            )
        print(f"depth {depth}: {time.perf_counter() - t0:.1f}s", flush=True)
    headers = [
        "net",
        "params (M)",
        "paper (M)",
        "Δ params",
        "MACs paper-rule (G)",
        "paper (G)",
        "Δ MACs",
        *[f"MACs {r} (G)" for r in args.rules if r != "paper"],
        "= paper (3 dp)",
    ]
    table1 = C.md_table(headers, rows)

    # --- other attention families ---------------------------------------------------------
    rows2, records2 = [], []
    for fam in args.families:
        for depth in args.family_depths:
            torch.manual_seed(0)
            base = create_model(f"{FAMILIES[fam]}{depth}", **kw)
            counts = {v: count(m, args.rules) for v, m in variants_of(base).items()}
            for v, c in counts.items():
                records2.append({"family": fam, "depth": depth, "variant": v, **c})
                dp = (c["params"] - counts["se"]["params"]) / counts["se"]["params"] * 100
                dm = (c["macs_paper"] - counts["se"]["macs_paper"]) / counts["se"]["macs_paper"]
                name = {"se": "", "se_a": "-A", "se_r": "-R"}[v]
                rows2.append(
                    [
                        f"{FAMILY_LABEL[fam]}{name}-ResNet{depth}",
                        f"{c['params'] / 1e6:.3f}",
                        f"{dp:+.2f}%",
                        f"{c['macs_paper'] / 1e9:.3f}",
                        f"{dm * 100:+.2f}%",
                        *[f"{c[f'macs_{r}'] / 1e9:.3f}" for r in args.rules if r != "paper"],
                    ]
                )
            print(f"{fam} {depth} done", flush=True)
    headers2 = [
        "net",
        "params (M)",
        "vs base",
        "MACs paper-rule (G)",
        "vs base",
        *[f"MACs {r} (G)" for r in args.rules if r != "paper"],
    ]
    table2 = C.md_table(headers2, rows2) if rows2 else "(not run)"

    status = "all SE and SE-R numbers match the paper at 3 decimals"
    if not compare:
        status = "not compared (non-paper widths)"
    elif mismatches:
        status = "MISMATCH with the paper: " + ", ".join(mismatches)
    md = (
        f"Conditions: {C.conditions_line(cond)}\n\n"
        "## Tables 1 and 2: SE / SE-A / SE-R ResNets (r=8, 100 classes, 1x3x32x32)\n\n"
        "SE-A = `convert(m, conditioned=False)`, SE-R = `convert(m)`, heads after layer2 and "
        "layer3. Paper-rule MACs = thop 0.0.31's rules (the paper's tool); `thop` = thop "
        f"installed here; `flop_counter` = FlopCounterMode FLOPs / 2.\n\n{table1}\n\n"
        f"Check: {status}.\n\n"
        "## Other attention blocks (not in the paper): base vs -A vs -R\n\n"
        f"{table2}\n"
    )
    print("\n" + md)
    payload = {
        "conditions": cond,
        "se": records,
        "families": records2,
        "mismatches": mismatches,
    }
    paths = C.write_results("params_macs", device, payload, md, out=args.out)
    print("wrote", *paths)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
