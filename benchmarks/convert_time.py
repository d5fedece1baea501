"""Wall time of ``condattn.convert()`` (SE-R, default options) on small to large models.

Models: our CIFAR se_resnet18/50/152 (100 classes, default example input 1x3x32x32),
torchvision efficientnet_b0 and regnet_y_400mf, and timm seresnet50 when timm is installed
(example input ``zeros(1, 3, 64, 64)``). Each model is converted ``--warmup`` times untimed, then
``--repeats`` times; we report the median. Target: se_resnet152 < 2 s.

When a model misses ``--target-s`` (or with ``--profile NAME``), one conversion runs under
cProfile and the cumulative time of convert's phases is reported (deep copy, fx tracing, shape
propagation, the graph edits, recompile) with the top functions.

    python benchmarks/convert_time.py
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from collections.abc import Callable, Sequence
from typing import Any

import _common as C
import torch
from torch import nn

import condattn
from condattn.models import create_model

# name -> (builder, aux_at, example input shape or None for the default)
_X64 = (1, 3, 64, 64)


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(num_classes=100)

    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, num_classes=100)

    return build


def _ours(name: str, **kw: Any) -> Callable[[], nn.Module]:
    return lambda: create_model(name, num_classes=100, **kw)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[str, ...], tuple[int, ...] | None]] = {
    "se_resnet18": (_ours("se_resnet18"), ("layer2", "layer3"), None),
    "se_resnet50": (_ours("se_resnet50"), ("layer2", "layer3"), None),
    "se_resnet152": (_ours("se_resnet152"), ("layer2", "layer3"), None),
    "tv_efficientnet_b0": (_tv("efficientnet_b0"), ("features.3", "features.5"), _X64),
    "tv_regnet_y_400mf": (
        _tv("regnet_y_400mf"),
        ("trunk_output.block2", "trunk_output.block3"),
        _X64,
    ),
    "timm_seresnet50": (_timm("seresnet50"), ("layer2", "layer3"), _X64),
}
SMOKE = {
    "se_resnet18_tiny": (_ours("se_resnet18", widths=(8, 8, 16, 16)), ("layer2", "layer3"), None)
}

# cProfile phases: (label, substring of "file:function" of a function whose cumulative time
# counts). Nested phases overlap (trace includes module creation, etc.).
PHASES = (
    ("deepcopy (step 2)", "copy.py:deepcopy"),
    ("fx trace (step 3)", "_symbolic_trace.py:trace"),
    ("shape propagation (step 3)", "propagate_shapes"),
    ("find inline SE (step 3)", "find_inline_se"),
    ("GraphModule init/recompile", "graph_module.py:recompile"),
    ("graph.lint (step 7)", "graph.py:lint"),
    ("AuxHead init (step 4)", "aux_head.py:__init__"),
    ("twin from_module (step 5)", ":from_module"),
    ("replace_submodule (step 5)", "replace_submodule"),
)


def _key(func: tuple[str, int, str]) -> str:
    return f"{func[0].rsplit('/', 1)[-1]}:{func[2]}"


def profile_convert(fn: Callable[[], Any], top: int) -> dict[str, Any]:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    total = max(ct for (_, _, _, ct, _) in stats.stats.values())
    phases = {}
    for label, pat in PHASES:
        # the outermost matching entry: the max cumulative time among matching functions
        cts = [v[3] for k, v in stats.stats.items() if pat in _key(k)]
        phases[label] = max(cts) if cts else 0.0
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    top_funcs = sorted(
        ((_key(k), v[3], v[1]) for k, v in stats.stats.items()), key=lambda kv: -kv[1]
    )[:top]
    return {
        "total_s": total,
        "phases_s": phases,
        "top_cumulative": top_funcs,
        "text": buf.getvalue(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(p, repeats=3, warmup=1)
    p.add_argument("--models", nargs="+", default=list(MODELS), help=", ".join(MODELS))
    p.add_argument("--target-s", type=float, default=2.0, help="target for se_resnet152")
    p.add_argument(
        "--profile", nargs="*", default=None, help="models to cProfile (default: misses)"
    )
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    table = dict(MODELS)
    if args.smoke:
        table, args.models, args.repeats, args.warmup = SMOKE, list(SMOKE), 1, 0
        args.profile = list(SMOKE)
    C.setup_threads(args.threads)
    device = torch.device("cpu")
    cond = C.conditions(device, repeats=args.repeats, warmup=args.warmup, variant="SE-R")
    print(C.conditions_line(cond), flush=True)
    records, rows, profiles = {}, [], {}
    for name in args.models:
        build, aux_at, shape = table[name]
        try:
            model = build()
        except ImportError as e:
            print(f"{name}: skipped ({e})", flush=True)
            continue
        ex = torch.zeros(shape) if shape else None
        n_params = condattn.count_params(model)

        def run(model=model, aux_at=aux_at, ex=ex) -> nn.Module:
            return condattn.convert(model, aux_at=list(aux_at), example_input=ex)

        res = C.timed(run, device=device, warmup=args.warmup, repeats=args.repeats)
        n_att = len(condattn.list_attention(model, example_input=ex))
        n_nodes = len(run().graph.nodes)
        target = args.target_s if name == "se_resnet152" else None
        miss = target is not None and res["median_s"] > target
        records[name] = {
            **res,
            "params": n_params,
            "attention_modules": n_att,
            "graph_nodes": n_nodes,
            "aux_at": aux_at,
            "example": shape or "default",
            "target_s": target,
            "met": None if target is None else not miss,
        }
        rows.append(
            [
                name,
                f"{n_params / 1e6:.1f}",
                n_att,
                n_nodes,
                ", ".join(aux_at),
                "x".join(map(str, shape)) if shape else "1x3x32x32",
                f"{res['median_s']:.3f}",
                f"{res['iqr_s']:.3f}",
                "-" if target is None else ("met" if not miss else f"**missed** (< {target} s)"),
            ]
        )
        print(f"{name}: median {res['median_s']:.3f}s (n={res['n']})", flush=True)
        if (args.profile is None and miss) or (args.profile and name in args.profile):
            profiles[name] = profile_convert(run, args.top)
            print(profiles[name]["text"], flush=True)
    md = [
        f"Conditions: {C.conditions_line(cond)}",
        C.md_table(
            [
                "model",
                "params (M)",
                "attention",
                "graph nodes",
                "aux_at",
                "example",
                "median s",
                "IQR s",
                "target",
            ],
            rows,
        ),
    ]
    for name, pr in profiles.items():
        md.append(
            f"### cProfile of one convert({name}) ({pr['total_s']:.2f} s under the profiler)\n\n"
            + C.md_table(
                ["phase (cumulative, nested phases overlap)", "s", "share"],
                [
                    [k, f"{v:.3f}", f"{v / pr['total_s'] * 100:.0f}%"]
                    for k, v in pr["phases_s"].items()
                ],
            )
            + "\n\nTop functions by cumulative time:\n\n"
            + C.md_table(
                ["function", "cumulative s", "calls"],
                [[f"`{f}`", f"{ct:.3f}", n] for f, ct, n in pr["top_cumulative"]],
            )
        )
        records[name]["profile"] = {k: v for k, v in pr.items() if k != "text"}
    text = "\n\n".join(md)
    print("\n" + text)
    print(
        "wrote",
        *C.write_results(
            "convert_time", device, {"conditions": cond, "models": records}, text, out=args.out
        ),
    )
    missed = [n for n, r in records.items() if r["met"] is False]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
