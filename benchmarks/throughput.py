"""Train-step and inference throughput of SE vs SE-A vs SE-R, and the cost of SE itself.

Part (a): SE, SE-A (``convert(conditioned=False)``) and SE-R (``convert()``) at each depth.
A train step is forward + loss + backward + ``SGD(momentum=0.9, nesterov, wd=5e-4).step()``;
the loss is cross-entropy for SE and ``DeepSupervisionLoss((0.3, 0.3))`` for SE-A/SE-R.
Inference is ``model.eval()`` under ``torch.inference_mode()``. The variants are timed
interleaved (round-robin, rotating the first) after a warm-up; we report the median seconds per
step, img/s, and the ratios of the medians SE-R/SE-A and SE-R/SE (targets on CPU at batch 128:
<= 1.03 and <= 1.10).

Part (b): what SE costs. ``resnetD`` (``attention="none"``, otherwise the same layout) vs
``se_resnetD``, each in several modes (:data:`MODE_FLAGS`): eager, channels_last, torch.compile
(inductor), bf16 autocast, and their combinations bf16 + channels_last (condattn's CPU default)
and compile + bf16 + channels_last, all interleaved in one run. Then a ``torch.profiler`` train
step of each (eager) and the ops whose time differs most between them: where the SE time goes.

Peak memory: CUDA ``max_memory_allocated``; on CPU the process peak RSS (``VmHWM``, reset via
``/proc/self/clear_refs``) minus the RSS before one train step. The CPU number includes allocator
slack and is only a rough guide.

    python benchmarks/throughput.py --part a --depths 34 --batch 128 --repeats 5
    python benchmarks/throughput.py --part b --depth-b 34 --batch 128 --modes eager bf16

A hand-written fused SE gate (one ``autograd.Function`` for pool, MLP and scale) was measured
here until commit e3c4440 (``--modes fused``): it saved about 0.5% of a CPU train step, below the
noise (benchmarks/results/fused_recheck), so it was removed from the library.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import _common as C
import torch
from torch import nn

import condattn
from condattn.models import create_model
from condattn.nn._common import GlobalAvgPool
from condattn.train.config import VARIANT_LABELS

LABEL = {**VARIANT_LABELS, "plain": "plain", "se_plain": "SE"}
# mode -> (channels_last, bf16 autocast, torch.compile). ``bf16_cl`` is condattn's default on a
# CPU with native bf16 (condattn.train.speed.decide); ``compile_bf16_cl`` adds inductor, which
# may fuse the SE gate's pool/scale elementwise work into neighbouring kernels.
MODE_FLAGS: dict[str, tuple[bool, bool, bool]] = {
    "eager": (False, False, False),
    "channels_last": (True, False, False),
    "compile": (False, False, True),
    "bf16": (False, True, False),
    "bf16_cl": (True, True, False),
    "compile_bf16_cl": (True, True, True),
    "bf16_cl_torchpool": (True, True, False),
}
MODES = tuple(MODE_FLAGS)
# Modes whose SE pools are torch's own ``nn.AdaptiveAvgPool2d`` (a mean) instead of condattn's
# GlobalAvgPool (a matrix product on CPU in bf16): what the default mode cost before.
TORCH_POOL_MODES = ("bf16_cl_torchpool",)


def with_torch_pools(model: nn.Module) -> nn.Module:
    """``model`` with every :class:`GlobalAvgPool` replaced by ``nn.AdaptiveAvgPool2d(1)``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GlobalAvgPool):
                setattr(parent, name, nn.AdaptiveAvgPool2d(1))
    return model


def widths_for(scale: float) -> tuple[int, ...]:
    """Stage widths ``(64, 128, 256, 512) * scale``, at least 8 (so C/r >= 1 at r=8)."""
    return tuple(max(8, round(w * scale)) for w in (64, 128, 256, 512))


def build(
    arch: str, variant: str, *, widths: Sequence[int], device: torch.device, seed: int = 0
) -> nn.Module:
    """``se``/``plain``: the model itself; ``se_a``/``se_r``: its conversion."""
    torch.manual_seed(seed)
    m = create_model(arch, num_classes=100, widths=tuple(widths))
    if variant == "se_a":
        m = condattn.convert(m, conditioned=False, init="default")
    elif variant == "se_r":
        m = condattn.convert(m, init="default")  # from-scratch init, as the paper's recipes
    return m.to(device)


def _autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_steps(
    model: nn.Module,
    *,
    batch: int,
    size: int,
    device: torch.device,
    channels_last: bool = False,
    bf16: bool = False,
    compile_: bool = False,
) -> dict[str, Callable[[], Any]]:
    """``{"train": step, "infer": step}`` closures on a fixed random batch."""
    torch.manual_seed(1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,), device=device)
    converted = isinstance(model, torch.fx.GraphModule)
    loss_fn = condattn.DeepSupervisionLoss((0.3, 0.3) if converted else ())
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    fwd = torch.compile(model) if compile_ else model

    def train() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with _autocast(device, bf16):
            loss = loss_fn(fwd(x), y).total
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(device, bf16):
            fwd(x)

    return {"train": train, "infer": infer}


def measure_memory(step: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    base = C.reset_peak_memory(device)
    step()
    return C.peak_memory(device, base)


def saved_for_backward_bytes(model: nn.Module, *, batch: int, size: int, device) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward in one training
    forward + loss: the activation memory of a train step, exact and allocator-independent."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    converted = isinstance(model, torch.fx.GraphModule)
    loss_fn = condattn.DeepSupervisionLoss((0.3, 0.3) if converted else ())
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model(x), y).total
    del loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


# --- part (a) -------------------------------------------------------------------------------


def part_a(args, device, log) -> tuple[dict, str]:
    records: dict[str, Any] = {}
    md = []
    for depth in args.depths:
        arch = f"se_resnet{depth}"
        log(f"[a] {arch}: building SE, SE-A, SE-R (widths {args.widths})")
        models = {
            v: build(arch, v, widths=args.widths, device=device) for v in ("se", "se_a", "se_r")
        }
        steps = {
            v: make_steps(m, batch=args.batch, size=args.size, device=device)
            for v, m in models.items()
        }
        rec: dict[str, Any] = {"params": {v: condattn.count_params(m) for v, m in models.items()}}
        rows = []
        for kind in args.kinds:
            log(f"[a] {arch} {kind}: {args.warmup} warm-up + {args.repeats} interleaved rounds")
            res = C.interleaved(
                {v: s[kind] for v, s in steps.items()},
                device=device,
                warmup=args.warmup,
                repeats=args.repeats,
                log=log,
            )
            med = {v: r["median_s"] for v, r in res.items()}
            mins = {v: r["min_s"] for v, r in res.items()}
            ratio_ra = med["se_r"] / med["se_a"]
            ratio_rs = med["se_r"] / med["se"]
            rec[kind] = {
                "timings": res,
                "se_r/se_a": ratio_ra,
                "se_r/se": ratio_rs,
                # min over rounds: the least-disturbed step, robust to other people's load
                "min se_r/se_a": mins["se_r"] / mins["se_a"],
                "min se_r/se": mins["se_r"] / mins["se"],
                # median of same-round ratios: cancels load drift between rounds
                "paired se_r/se_a": C.paired_ratio(res, "se_r", "se_a"),
                "paired se_r/se": C.paired_ratio(res, "se_r", "se"),
            }
            for v, r in res.items():
                rows.append(
                    [
                        f"{LABEL[v]}-ResNet{depth}",
                        kind,
                        f"{r['median_s']:.3f}",
                        f"{r['iqr_s']:.3f}",
                        f"{r['min_s']:.3f}",
                        f"{args.batch / r['median_s']:.1f}",
                        f"{med[v] / med['se']:.3f}",
                        f"{med[v] / med['se_a']:.3f}",
                        f"{mins[v] / mins['se']:.3f}",
                        f"{mins[v] / mins['se_a']:.3f}",
                    ]
                )
            log(
                f"[a] {arch} {kind}: "
                + str({k: round(v, 3) for k, v in rec[kind].items() if k != "timings"})
            )
        if args.memory and "train" in args.kinds:
            mem = {v: measure_memory(s["train"], device) for v, s in steps.items()}
            for v, m in models.items():
                mem[v]["saved_for_backward_bytes"] = saved_for_backward_bytes(
                    m, batch=args.batch, size=args.size, device=device
                )
            rec["memory_train"] = mem
        records[str(depth)] = rec
        table = C.md_table(
            [
                "net",
                "step",
                "median s",
                "IQR s",
                "min s",
                "img/s (median)",
                "median / SE",
                "median / SE-A",
                "min / SE",
                "min / SE-A",
            ],
            rows,
        )
        summary = "; ".join(
            f"{k}: median of same-round ratios SE-R/SE-A **{rec[k]['paired se_r/se_a']:.3f}** "
            f"(target <= 1.03), SE-R/SE **{rec[k]['paired se_r/se']:.3f}** (target <= 1.10); "
            f"ratio of medians {rec[k]['se_r/se_a']:.3f} and {rec[k]['se_r/se']:.3f}; "
            f"ratio of minima {rec[k]['min se_r/se_a']:.3f} and {rec[k]['min se_r/se']:.3f}"
            for k in args.kinds
        )
        mem_md = ""
        if "memory_train" in rec:
            mem = rec["memory_train"]
            kind = next(iter(mem.values()))["kind"]
            mem_md = (
                "\n\nActivation memory saved for backward (MiB, exact: distinct storages "
                "packed by autograd in one train forward, parameters excluded): "
                + ", ".join(
                    f"{LABEL[v]} {_mib(m['saved_for_backward_bytes'])}" for v, m in mem.items()
                )
                + f".\n\nPeak memory of one train step (MiB; {kind}; rough): "
                + ", ".join(f"{LABEL[v]} {_mib(m['delta_bytes'])}" for v, m in mem.items())
                + "."
            )
        md.append(f"### ResNet{depth}\n\n{table}\n\nRatios: {summary}.{mem_md}")
        del models, steps
    return records, "\n\n".join(md)


# --- part (b) -------------------------------------------------------------------------------


def _mode_steps(model: nn.Module, mode: str, args, device) -> dict[str, Callable[[], Any]]:
    # A copy per mode: make_steps converts the memory format in place (Module.to), and modes that
    # share one model would all run with the format of the last one prepared.
    model = copy.deepcopy(model)
    if mode in TORCH_POOL_MODES:
        model = with_torch_pools(model)
    return make_steps(
        model,
        batch=args.batch,
        size=args.size,
        device=device,
        channels_last=MODE_FLAGS[mode][0],
        bf16=MODE_FLAGS[mode][1],
        compile_=MODE_FLAGS[mode][2],
    )


def profile_step(step: Callable[[], Any], device: torch.device) -> dict[str, float]:
    """Self time (ms) per op name of one step under ``torch.profiler`` (after one warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        C.sync(device)
    out: dict[str, float] = {}
    for e in prof.key_averages():
        t = e.self_cpu_time_total
        if device.type == "cuda":
            t += getattr(e, "self_device_time_total", 0) or 0
        out[e.key] = out.get(e.key, 0.0) + t / 1e3
    return out


def part_b(args, device, log) -> tuple[dict, str]:
    depth = args.depth_b
    archs = {"plain": f"resnet{depth}", "se": f"se_resnet{depth}"}
    modes = [m for m in args.modes if m in MODES]
    base = {k: build(a, "se", widths=args.widths, device=device) for k, a in archs.items()}
    rec: dict[str, Any] = {"modes": modes}
    md = []
    for kind in args.kinds:
        steps = {}
        for mode in modes:
            for k, m in base.items():
                log(f"[b] preparing {k} {mode} {kind}")
                steps[(k, mode)] = _mode_steps(m, mode, args, device)[kind]
        if any(MODE_FLAGS[m][2] for m in modes):  # compile outside the timed loop
            for key in [k for k in steps if MODE_FLAGS[k[1]][2]]:
                t0 = time.perf_counter()
                steps[key]()
                log(f"[b] compiled {key} {kind} in {time.perf_counter() - t0:.1f}s")
        log(f"[b] resnet{depth} {kind}: {len(steps)} variants interleaved, {args.repeats} rounds")
        res = C.interleaved(
            {f"{k}/{mode}": s for (k, mode), s in steps.items()},
            device=device,
            warmup=args.warmup,
            repeats=args.repeats,
            log=log,
        )
        med = {k: r["median_s"] for k, r in res.items()}
        mins = {k: r["min_s"] for k, r in res.items()}
        eager_plain = med["plain/eager"]
        rows = []
        ratios: dict[str, dict[str, float]] = {}
        for mode in modes:
            se_key = f"se/{mode}"
            plain_key = f"plain/{mode}"
            ratios[mode] = {
                "paired": C.paired_ratio(res, se_key, plain_key),
                "medians": med[se_key] / med[plain_key],
                "minima": mins[se_key] / mins[plain_key],
            }
            rows.append(
                [
                    mode,
                    f"{med[plain_key]:.3f}",
                    f"{med[se_key]:.3f}",
                    f"**{ratios[mode]['paired']:.3f}**",
                    f"{ratios[mode]['medians']:.3f}",
                    f"{ratios[mode]['minima']:.3f}",
                    f"{eager_plain / med[plain_key]:.2f}x",
                    f"{med['se/eager'] / med[se_key]:.2f}x",
                ]
            )
        rec[kind] = {"timings": res, "se/plain": ratios}
        log(f"[b] {kind} SE/plain: " + str({m: round(r["paired"], 3) for m, r in ratios.items()}))
        md.append(
            f"### {kind} step, ResNet{depth} vs SE-ResNet{depth}\n\n"
            + C.md_table(
                [
                    "mode",
                    "plain median s",
                    "SE median s",
                    "SE / plain (median same-round ratio)",
                    "(ratio of medians)",
                    "(ratio of minima)",
                    "plain speed-up vs eager",
                    "SE speed-up vs eager",
                ],
                rows,
            )
        )
        del steps
    if args.profile:
        log("[b] profiling one eager train step of each")
        prof = {}
        for k, m in base.items():
            prof[k] = profile_step(
                make_steps(m, batch=args.batch, size=args.size, device=device)["train"], device
            )
        keys = set(prof["se"]) | set(prof["plain"])
        diff = sorted(
            ((k, prof["se"].get(k, 0.0) - prof["plain"].get(k, 0.0)) for k in keys),
            key=lambda kv: -abs(kv[1]),
        )
        tot = {
            k: sum(v for n, v in p.items() if not n.startswith("ProfilerStep"))
            for k, p in prof.items()
        }
        top_se = sorted(prof["se"].items(), key=lambda kv: -kv[1])[: args.top]
        rec["profile_ms"] = {
            k: dict(sorted(p.items(), key=lambda kv: -kv[1])[:40]) for k, p in prof.items()
        }
        rec["profile_total_ms"] = tot
        md.append(
            "### Profile: one eager train step (torch.profiler self CPU time, ms)\n\n"
            f"Total self time: plain {tot['plain']:.0f} ms, SE {tot['se']:.0f} ms "
            f"(+{tot['se'] - tot['plain']:.0f} ms, {tot['se'] / tot['plain']:.3f}x).\n\n"
            "Ops whose time differs most, SE minus plain:\n\n"
            + C.md_table(
                ["op", "plain ms", "SE ms", "SE - plain ms"],
                [
                    [
                        f"`{k}`",
                        f"{prof['plain'].get(k, 0):.1f}",
                        f"{prof['se'].get(k, 0):.1f}",
                        f"{d:+.1f}",
                    ]
                    for k, d in diff[: args.top]
                ],
            )
            + "\n\nTop ops of the SE step:\n\n"
            + C.md_table(["op", "SE ms"], [[f"`{k}`", f"{v:.1f}"] for k, v in top_se])
        )
    return rec, "\n\n".join(md)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(p, repeats=5, warmup=1)
    p.add_argument("--part", choices=("a", "b", "ab"), default="ab")
    p.add_argument("--depths", type=int, nargs="+", default=[34], help="part (a) depths")
    p.add_argument("--depth-b", type=int, default=34, help="part (b) depth")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="image side")
    p.add_argument("--widths-scale", type=float, default=1.0, help="scale of (64,128,256,512)")
    p.add_argument("--kinds", nargs="+", default=["train", "infer"], choices=("train", "infer"))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="part (b)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--top", type=int, default=15, help="ops shown by the profile")
    args = p.parse_args(argv)
    if args.smoke:
        args.depths, args.depth_b, args.batch, args.widths_scale = [18], 18, 2, 0.125
        args.repeats, args.warmup, args.top = 1, 0, 5
        args.modes = [m for m in args.modes if m in ("eager", "channels_last")]
        args.threads = args.threads or 1  # 2 threads on a loaded 2-core box thrash (OpenMP)
    C.setup_threads(args.threads)
    device = C.pick_device(args.device)
    args.widths = widths_for(args.widths_scale)
    cond = C.conditions(
        device,
        batch=args.batch,
        image=f"{args.size}x{args.size}",
        widths=list(args.widths),
        repeats=args.repeats,
        warmup=args.warmup,
        interleaved=True,
    )
    log = functools.partial(print, flush=True)
    log(C.conditions_line(cond))
    payload: dict[str, Any] = {"conditions": cond, "args": vars(args)}
    md = [f"Conditions: {C.conditions_line(cond)}"]
    if "a" in args.part:
        payload["a"], text = part_a(args, device, log)
        md.append("## (a) SE vs SE-A vs SE-R\n\n" + text)
    if "b" in args.part:
        payload["b"], text = part_b(args, device, log)
        md.append(
            "## (b) The cost of SE: plain ResNet vs SE-ResNet, eager and fast paths\n\n" + text
        )
    cond_end = C.conditions(device)["loadavg_1_5_15"]
    md.append(f"Load average at the end: {cond_end}.")
    payload["loadavg_end"] = cond_end
    text = "\n\n".join(md)
    print("\n" + text)
    name = "throughput" + ("" if args.part == "ab" else f"_{args.part}")
    print("wrote", *C.write_results(name, device, payload, text, out=args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
