"""Zoo coverage: every CNN classifier of torchvision and timm, converted, with or without attention.

For each classification model of ``torchvision.models.list_models(module=torchvision.models)``
and ``timm.list_models()``:

1. **Detect** (cheap, on the meta device): build it with random weights and look for instances
   of the swap table's types (:func:`condattn.get_attention_mapping`), inside blocks that fx
   does not trace included, and count its downsampling layers (``Conv2d`` or pooling with a
   stride over 1). A model with swappable attention is in the sweep (route ``direct``). One
   without is a **CNN classifier** when it has at least two downsampling layers (route
   ``add_attention``); a pure transformer (ViT, DeiT, Swin, BEiT, Mixer, ...) has one, its patch
   embedding, and is left out. Models with more parameters than ``--max-params`` (default 40e6)
   are counted but not run unless ``--all``.
2. **Check** (:func:`check_model`): build it for real (seeded random weights, made "trained-like":
   random BatchNorm affine parameters; the all-zero parameters that fresh models start with, e.g.
   zero-init residual gains, given small random values, so that nothing multiplies the attention
   by 0; BatchNorm statistics from a train-mode batch that holds the test input, so that the
   activations stay in range as a trained model's do and fp32 rounding is not amplified
   block after block). In train mode, a ``direct`` model is converted with ``aux_at="auto"`` and
   ``init="zeros"``; an ``add_attention`` one goes through ``condattn.add_attention(kind="se",
   init="identity")`` first. Both are compared with the original in eval mode, fp32, on the same
   input: ``max|a - b| / max|a| <= 1e-4`` passes (and two eval calls agree exactly: the result
   follows ``.eval()``). A forward hook also checks that every twin ran with T. The input is
   64 px, then 96 px, then the model's default size (timm's ``pretrained_cfg["input_size"]``,
   torchvision's weights' crop size) where a smaller one fails. A plain model whose traced trunk
   has conv blocks at fewer than two resolutions (``add_attention`` refuses it: a transformer
   whose only 4-D stage is its patch embedding) is reported as not a CNN, not as a failure.

Each model runs in a worker process with a per-model timeout (``--timeout``), so one
pathological model cannot hang the sweep; ``--jobs`` workers run in parallel (``--jobs 0``: in
this process, no timeout, for tests and debugging). Per model it reports the route, the
position of each added block (``standard`` / ``post``), the route(s) of the fed attention
(``graph`` / ``in-place``), the heads chosen by ``aux_at="auto"``, the number of attention
modules fed, the relative difference, the time, and pass/fail with the reason; per family, N/M.
Results: ``benchmarks/results/zoo_sweep_<device>.json`` and ``.md``; finished models are also
appended to ``zoo_sweep_<device>.partial.jsonl`` so that ``--resume`` continues a killed run
(models skipped for the size cap are run again: the cap may have been raised). ``--all`` writes
``zoo_sweep_all_<device>.*`` instead; ``--attention-only`` leaves the plain CNNs out.

    python benchmarks/zoo_sweep.py                 # under the size cap
    python benchmarks/zoo_sweep.py --all --jobs 2  # every CNN classifier
    python benchmarks/zoo_sweep.py --models timm:lcnet_050 torchvision:resnet18
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import random
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C
import torch
from _zoo_report import markdown, summarize
from torch import nn

ZOOS = ("torchvision", "timm")
SIZES = (64, 96)
TOL = 1e-4
MAX_PARAMS = 40e6
CALIBRATION_PIXELS = 16 * 96 * 96  # images x pixels of the BN calibration batch, at most
BATCH = 2
DIRECT = "direct"  # a model with swappable attention: convert
ADD = "add_attention"  # a plain CNN: add_attention(init="identity"), then convert
NO_ATTENTION = "no swappable attention"


# --- the two zoos ------------------------------------------------------------------------------


def list_models(zoo: str) -> list[str]:
    """The classification models of a zoo, by name."""
    if zoo == "torchvision":
        import torchvision

        return sorted(torchvision.models.list_models(module=torchvision.models))
    if zoo == "timm":
        import timm

        return sorted(timm.list_models())
    raise ValueError(f"unknown zoo {zoo!r}; valid: {', '.join(ZOOS)}")


def build(zoo: str, name: str) -> nn.Module:
    """The model with random weights and its default number of classes."""
    if zoo == "torchvision":
        import torchvision

        # GoogLeNet and Inception-v3 return their aux classifiers' outputs too in train mode
        # (a namedtuple, not logits): built without them, as convert's error message advises.
        extra = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(name, weights=None, **extra)
    import timm

    return timm.create_model(name, pretrained=False)


def default_size(zoo: str, name: str, model: nn.Module) -> int | None:
    """The input size the model was made for (the last of its pretrained input shape)."""
    try:
        if zoo == "timm":
            return int(model.pretrained_cfg["input_size"][-1])
        import torchvision

        weights = list(torchvision.models.get_model_weights(name))
        return int(weights[0].transforms().crop_size[0]) if weights else 224
    except Exception:  # no pretrained config: the common ImageNet size
        return 224


def attention_kinds(model: nn.Module) -> list[str]:
    """The swappable attention types in ``model`` (exact types, as convert matches them)."""
    from condattn import get_attention_mapping

    table = get_attention_mapping()
    return sorted({type(m).__name__ for m in model.modules() if type(m) in table})


@contextlib.contextmanager
def _parameters_on_meta():
    """Move each parameter to the meta device as it is registered (as accelerate's
    ``init_empty_weights``): for models whose construction computes with tensors (torchvision's
    RegNets), which ``torch.device("meta")`` would turn into meta tensors too."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, param)
        if param is not None:
            self._parameters[name] = nn.Parameter(param.to("meta"), param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def downsampling_layers(model: nn.Module) -> int:
    """How many ``Conv2d`` and pooling layers have a stride over 1 (a pure transformer: 1)."""
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = m.stride if m.stride is not None else m.kernel_size
            n += (stride if isinstance(stride, int) else max(stride)) > 1
    return n


def detect(zoo: str, name: str) -> dict[str, Any]:
    """Build with parameters on the meta device (no memory, no init cost): attention kinds,
    parameters and downsampling layers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                model = build(zoo, name)
        except Exception:
            with _parameters_on_meta():
                model = build(zoo, name)
    return {
        "kinds": attention_kinds(model),
        "downsampling": downsampling_layers(model),
        "params": sum(p.numel() for p in model.parameters()),
        "default_size": default_size(zoo, name, model),
    }


# --- one model ---------------------------------------------------------------------------------


@torch.no_grad()
def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affines and no all-zero parameters (so that no factor hides T): fresh models
    zero-init e.g. the last BN of each residual branch or an NF block's last gain."""
    g = torch.Generator().manual_seed(seed)

    def rand(p: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(p.shape, generator=g, dtype=p.dtype) * (hi - lo) + lo

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.copy_(rand(m.weight, 0.5, 1.5))
            m.bias.copy_(rand(m.bias, -0.2, 0.2))
    for p in model.parameters():
        if p.is_floating_point() and not p.any():
            p.copy_(rand(p, -0.1, 0.1))
    return model


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, *, seed: int = 2) -> None:
    """BN running statistics from one train-mode batch: the inputs ``x`` and random images of
    their size, up to 16 images at 96 px or less and as many pixels in all at larger sizes (only
    ``x`` from 224 px on), as a trained model's statistics match its data. Random statistics
    instead (or fresh ones, mean 0 and variance 1), or ones from other images only, let the
    activations of a deep random network grow block after block in eval mode (logits in the
    thousands), and fp32 rounding with them. Leaves the model in eval mode."""
    batch = min(16, CALIBRATION_PIXELS // (x.shape[-2] * x.shape[-1]))
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: exactly this batch's statistics
    extra = torch.randn(
        max(batch - len(x), 0), *x.shape[1:], generator=torch.Generator().manual_seed(seed)
    )
    try:
        model.train()(torch.cat([x, extra]))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.eval()


class _TCheck:
    """Forward pre-hooks on the twins: which of them ran, and whether each had its T."""

    def __init__(self, model: nn.Module):
        from condattn.transform.inplace import InPlaceCond
        from condattn.transform.mappings import cond_types

        self._inplace = InPlaceCond
        self.twins = {n: m for n, m in model.named_modules() if isinstance(m, cond_types())}
        self.with_t: set[str] = set()
        self.without_t: set[str] = set()
        self._handles = [
            m.register_forward_pre_hook(self._hook(n), with_kwargs=True)
            for n, m in self.twins.items()
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            has_t = len(args) >= 2 or "cond" in kwargs
            if isinstance(module, self._inplace):
                has_t = has_t or module.__dict__.get("_condattn_cond") is not None
            (self.with_t if has_t else self.without_t).add(name)

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _short(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


NOT_CNN = "not a CNN"  # the reason of a plain model that is left out


def _convert(model: nn.Module, size: int, route: str) -> tuple[nn.Module, dict[str, Any]]:
    """Convert ``model`` (in its mode) by ``route``; for ``add_attention``, the added model's
    positions and timing too."""
    import condattn

    example = torch.zeros(1, 3, size, size)
    if route == DIRECT:
        return condattn.convert(model, "auto", init="zeros", example_input=example), {}
    start = time.perf_counter()
    added = condattn.add_attention(model, kind="se", init="identity", example_input=example)
    info = {
        "add_s": time.perf_counter() - start,
        "positions": dict(Counter(a.position for a in condattn.get_added(added).values())),
        "_added": added,
    }
    return condattn.convert(added, "auto", init="zeros", example_input=example), info


def _compare(model: nn.Module, size: int, route: str = "direct") -> dict[str, Any]:
    """Convert at ``size`` px (in train mode) and compare with the original in eval mode
    (raises on failure)."""
    import condattn

    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
    calibrate_batchnorm(model, x)
    with torch.no_grad():
        expected = model(x)
    start = time.perf_counter()
    model.train()  # converted in train mode, compared in eval: the result must follow .eval()
    try:
        conv, info = _convert(model, size, route)
    finally:
        model.eval()
    t_convert = time.perf_counter() - start
    conv.eval()
    cfg = condattn.get_config(conv)
    check = _TCheck(conv)
    try:
        with torch.no_grad():
            out = conv(x)
            again = conv(x)
            added = info.pop("_added", None)
            if added is not None:
                info["added_rel_diff"] = _rel(added.eval()(x), expected)
    finally:
        check.close()
    return {
        "size": size,
        "route": route,
        **info,
        "heads": list(cfg.aux_at),
        "placement": cfg.placement,
        "fed": sum(len(v) for v in cfg.feeds.values()),
        "routes": dict(Counter(cfg.routes.values())),
        "twins": len(check.twins),
        "twins_with_t": len(check.with_t),
        "twins_without_t": sorted(set(check.twins) - check.with_t),
        "rel_diff": _rel(out.logits, expected),
        "eval_deterministic": bool(torch.equal(out.logits, again.logits)),
        "graphs": "one" if conv.shares_graph else "train+eval",
        "convert_s": t_convert,
    }


def _rel(out: torch.Tensor, expected: torch.Tensor) -> float:
    diff = float((out.double() - expected.double()).abs().max())
    scale = float(expected.double().abs().max())
    return diff / scale if scale > 0 else diff


def _verdict(res: dict[str, Any], tol: float) -> tuple[str, str]:
    if res["twins_without_t"]:
        return "fail", f"twins that ran without T (or did not run): {res['twins_without_t'][:5]}"
    if not res["eval_deterministic"]:
        return "fail", "eval is not deterministic: the converted model did not follow .eval()"
    if not res["rel_diff"] <= tol:  # NaN fails
        return "fail", f"relative max difference {res['rel_diff']:.3g} > {tol:g}"
    return "pass", ""


def check_model(
    zoo: str,
    name: str,
    *,
    max_params: float | None = MAX_PARAMS,
    sizes: Sequence[int] = SIZES,
    tol: float = TOL,
    plain: bool = True,
) -> dict[str, Any]:
    """Detect, build, convert (``aux_at="auto"``, ``init="zeros"``; a plain CNN through
    ``add_attention(init="identity")`` first) and compare one model.

    Args:
        plain: also run CNNs without swappable attention (False: skip them, as before).

    Returns:
        A JSON-able dict: ``status`` is ``"pass"``, ``"fail"`` (with ``reason``), ``"skip"``
        (not a CNN, no attention with ``plain=False``, or over ``max_params``), plus what
        :func:`_compare` measured.
    """
    start = time.perf_counter()
    row: dict[str, Any] = {"zoo": zoo, "model": name}
    try:
        row.update(detect(zoo, name))
    except Exception as e:
        return {**row, "status": "fail", "reason": "build on meta: " + _short(e)}
    row["route"] = DIRECT if row["kinds"] else ADD
    if row["route"] == ADD and (not plain or row["downsampling"] < 2):
        why = NO_ATTENTION if not plain else f"{NOT_CNN}: {row['downsampling']} downsampling layer"
        return {**row, "status": "skip", "reason": why}
    if max_params is not None and row["params"] > max_params:
        return {**row, "status": "skip", "reason": f"over the size cap ({max_params:g})"}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = trained_like(build(zoo, name)).eval()
    tries = list(dict.fromkeys([*sizes, row["default_size"] or 224]))
    errors = []
    for size in tries:
        try:
            res = _compare(model, size, row["route"])
        except Exception as e:
            if row["route"] == ADD and "needs conv blocks in at least two stages" in str(e):
                why = f"{NOT_CNN}: conv blocks at fewer than two resolutions when traced"
                return {**row, "status": "skip", "reason": why}
            errors.append(f"{size}px: {_short(e)}")
            continue
        status, reason = _verdict(res, tol)
        if status == "pass" and errors:
            reason = "smaller sizes failed: " + " / ".join(errors)
        total = time.perf_counter() - start
        return {**row, **res, "status": status, "reason": reason, "total_s": total}
    reason = " / ".join(errors)
    return {**row, "status": "fail", "reason": reason, "total_s": time.perf_counter() - start}


# --- the sweep: workers with a per-model timeout -------------------------------------------------


def _limit_memory(share: float) -> None:
    """Let an allocation beyond ``share`` of the available memory fail in this process (a
    ``RuntimeError`` reported as the model's failure) rather than wake the kernel's OOM killer,
    and offer this process to the OOM killer first."""
    import resource

    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        status = Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]
        available = int(info["MemAvailable"].split()[0]) * 1024
        limit = int(status) * 1024 + int(share * available)
    except (OSError, KeyError, IndexError, ValueError):
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _worker(conn, threads: int, max_params, tol: float, share: float, plain: bool) -> None:
    torch.set_num_threads(threads)
    import condattn  # noqa: F401  (imported before "ready": the timeout counts the model only)

    with contextlib.suppress(ImportError):
        import timm  # noqa: F401
    _limit_memory(share)
    conn.send("ready")
    while True:
        task = conn.recv()
        if task is None:
            return
        zoo, name = task
        try:
            conn.send(check_model(zoo, name, max_params=max_params, tol=tol, plain=plain))
        except BaseException as e:  # a bug in the check itself: report it, keep serving
            conn.send(
                {"zoo": zoo, "model": name, "status": "fail", "reason": "sweep: " + _short(e)}
            )
            traceback.print_exc()


class _Slot:
    """One worker process and the task it runs."""

    def __init__(self, ctx, args: argparse.Namespace):
        self.ctx, self.args = ctx, args
        self.task: tuple[str, str] | None = None
        self.since = 0.0
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        a = self.args
        self.proc = self.ctx.Process(
            target=_worker,
            args=(child, a.threads, a.cap, a.tol, 0.8 / a.jobs, a.plain),
            daemon=True,
        )
        self.proc.start()
        child.close()
        with contextlib.suppress(EOFError, OSError):  # a worker that died is seen by poll()
            if self.conn.poll(300):  # the worker imports torch, condattn and timm first
                self.conn.recv()

    def submit(self, task: tuple[str, str]) -> None:
        self.task, self.since = task, time.perf_counter()
        self.conn.send(task)

    def poll(self) -> dict[str, Any] | None:
        """The finished task's result, a failure if it timed out or crashed, or None."""
        zoo, name = self.task
        elapsed = time.perf_counter() - self.since
        try:
            if self.conn.poll(0.2):
                res = self.conn.recv()
                self.task = None
                return res
        except (EOFError, OSError):
            reason = f"worker died (exit code {self.proc.exitcode}, e.g. out of memory)"
        else:
            if elapsed <= self.args.timeout:
                return None
            reason = f"timeout after {self.args.timeout:g} s"
        self.proc.kill()
        self.proc.join()
        self._start()
        self.task = None
        return {"zoo": zoo, "model": name, "status": "fail", "reason": reason, "total_s": elapsed}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


def run_all(tasks: Sequence[tuple[str, str]], args: argparse.Namespace, on_result) -> None:
    """Run ``check_model`` on every task, ``args.jobs`` at a time (0: here, in order)."""
    if args.jobs == 0:
        for zoo, name in tasks:
            on_result(check_model(zoo, name, max_params=args.cap, tol=args.tol, plain=args.plain))
        return
    ctx = mp.get_context("spawn")
    slots = [_Slot(ctx, args) for _ in range(min(args.jobs, len(tasks)) or 1)]
    queue = list(tasks)
    try:
        while queue or any(s.task for s in slots):
            for s in slots:
                if s.task is None and queue:
                    s.submit(queue.pop(0))
                elif s.task is not None and (res := s.poll()) is not None:
                    on_result(res)
    finally:
        for s in slots:
            s.close()


# --- command line ------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", nargs="+", default=list(ZOOS), choices=ZOOS)
    p.add_argument("--models", nargs="+", default=None, help="ZOO:NAME ... instead of the zoos")
    p.add_argument("--sample", type=int, default=None, help="a random sample of N models")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed")
    p.add_argument("--max-params", type=float, default=MAX_PARAMS, help="the size cap")
    p.add_argument("--all", action="store_true", help="no size cap")
    p.add_argument("--attention-only", action="store_true", help="leave out CNNs without attention")
    p.add_argument("--tol", type=float, default=TOL)
    p.add_argument("--jobs", type=int, default=1, help="worker processes (0: in this process)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--resume", action="store_true", help="skip models in the .partial.jsonl")
    p.add_argument("--out", default=None, help=f"results folder (default: {C.RESULTS})")
    args = p.parse_args(argv)
    args.cap = None if args.all else args.max_params
    args.plain = not args.attention_only
    return args


def _tasks(args: argparse.Namespace) -> tuple[list[tuple[str, str]], dict[str, int]]:
    if args.models:
        tasks = [tuple(m.split(":", 1)) for m in args.models]
        bad = [m for m, t in zip(args.models, tasks) if len(t) != 2 or t[0] not in ZOOS]
        if bad:
            raise SystemExit(f"--models takes ZOO:NAME with ZOO in {ZOOS}; got {bad}")
    else:
        tasks = [(z, n) for z in args.zoo for n in list_models(z)]
    if args.sample is not None:
        tasks = sorted(random.Random(args.seed).sample(tasks, min(args.sample, len(tasks))))
    return tasks, dict(Counter(z for z, _ in tasks))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    device = torch.device("cpu")
    tasks, listed = _tasks(args)
    out_dir = Path(args.out) if args.out is not None else C.RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "zoo_sweep_all" if args.all else "zoo_sweep"
    partial = out_dir / f"{name}_{C.device_slug(device)}.partial.jsonl"
    rows: list[dict[str, Any]] = []
    if args.resume and partial.is_file():
        rows = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if not r.get("reason", "").startswith("over the size cap")]
        done = {(r["zoo"], r["model"]) for r in rows}
        tasks = [t for t in tasks if t not in done]
    elif partial.exists():
        partial.unlink()
    print(f"zoo_sweep: {len(tasks)} models to check ({listed})", flush=True)

    def on_result(r: dict[str, Any]) -> None:
        rows.append(r)
        with partial.open("a") as f:
            f.write(json.dumps(r) + "\n")
        if r["status"] != "skip":
            extra = f" rel {r['rel_diff']:.1e}" if "rel_diff" in r else ""
            why = f" ({r['reason']})" if r.get("reason") else ""
            print(f"[{len(rows)}] {r['zoo']}:{r['model']} {r['status']}{extra}{why}", flush=True)

    run_all(tasks, args, on_result)
    order = {t: i for i, t in enumerate(_tasks(args)[0])}
    rows.sort(key=lambda r: order.get((r["zoo"], r["model"]), len(order)))
    payload = {
        "conditions": C.conditions(device, jobs=args.jobs, threads_per_worker=args.threads),
        "settings": {
            "sizes": list(SIZES),
            "tol": args.tol,
            "max_params": args.cap,
            "timeout": args.timeout,
            "sample": args.sample,
            "plain": args.plain,
            "seed": args.seed,
        },
        "summary": summarize(rows, listed),
        "models": [r for r in rows if r["status"] != "skip" or r["reason"].startswith("over")],
        "left_out": [r for r in rows if r["status"] == "skip" and r["reason"].startswith(NOT_CNN)],
    }
    C.write_results(name, device, payload, markdown(payload), out=out_dir)
    for zoo, z in payload["summary"].items():
        print(
            f"{zoo}: {z['passed']}/{z['run']} function-preserving ({z['over_cap']} over cap, "
            f"{z['plain']} without attention)"
        )
    return 0 if all(z["failed"] == 0 for z in payload["summary"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
