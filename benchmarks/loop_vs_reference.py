"""condattn's default training loop against a plain eager PyTorch loop, quiet and under load.

Three variants train the same model (the narrow SE-ResNet18 of ``recipes/quick.toml``, 16/32/64/
128 wide; ``--variant`` picks se, se_a or se_r) with the same loss, SGD and batch size:

- ``reference``: a plain eager loop over a ``torch.utils.data.DataLoader`` of PIL images (2
  workers, persistent) with the standard torchvision transforms (``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip``, ``RandomRotation(15)``, ``ToTensor``, ``Normalize``), fp32, torch's
  default threads and the caller's OpenMP environment.
- ``condattn``: what ``condattn train`` runs by default: the OpenMP environment the command sets
  before torch loads (:func:`condattn._omp_env.apply_thread_env`), the start-up :class:`SpeedPlan`
  (:func:`condattn.train.speed.decide` on this machine with the default ``[system]``:
  precision, memory format, threads), the loop's own objects and step
  (``condattn.train.loop._build`` and ``_train_steps``), fed by ``TensorLoader`` +
  ``BatchAugment`` (uint8 images in memory, augmentation batched).
- ``condattn_mem``: the same, on one batch already in memory (augmented once): the step without
  the data pipeline. ``condattn`` / ``condattn_mem`` is the pipeline's cost.

Each variant lives in its own worker process (its own environment and threads, as separate jobs
would) and is first warmed up. Each round then asks every worker in turn (the first rotating) to
run ``--steps`` steps, and times them; one worker runs at a time, and each turn starts once the
machine's load is back to the phase's baseline (the reference's DataLoader workers go on
prefetching after its turn). The quiet phase is followed by a
busy one with a competing one-core busy loop (``python -c "while True: pass"``). Reported: median
img/s per variant and phase, the median of same-round ratios condattn / reference, and busy /
quiet per variant (the goal: >= 1.8x quiet, and condattn keeping >= 45% of its quiet speed).

Data: real CIFAR-100 (``find_cifar100``, e.g. ``../shared/data``) with the recipe's 10,000-image
training subset, else the synthetic stand-in (the results say which). Results go to
``benchmarks/results/loop_vs_reference_<device>.{json,md}``.

    python benchmarks/loop_vs_reference.py            # about 4-6 minutes on a 2-core CPU
    python benchmarks/loop_vs_reference.py --quick    # under a minute: checks that it works
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Nothing here imports torch at module level: a worker must set its OpenMP environment first.
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# name -> how its worker runs: "ours" (condattn's path) or the reference; the batch already in
# memory; condattn's OpenMP settings (thread_env); extra environment; extra --set overrides.
SPECS: dict[str, dict[str, Any]] = {
    "reference": {"kind": "reference"},
    "condattn": {"kind": "ours"},
    "condattn_mem": {"kind": "ours", "in_memory": True},
    # --policies: the same default loop under other OpenMP wait settings and thread counts.
    "condattn_spin": {"kind": "ours", "thread_env": False},  # OpenMP's default: spin, then sleep
    "condattn_spin10k": {"kind": "ours", "thread_env": False, "env": {"GOMP_SPINCOUNT": "10000"}},
    "condattn_1thread": {"kind": "ours", "sets": ["system.threads=1"]},
}
VARIANTS = ("reference", "condattn", "condattn_mem")
POLICIES = ("condattn_spin", "condattn_spin10k", "condattn_1thread")


# --- workers ---------------------------------------------------------------------------------


def _config(args: argparse.Namespace, extra: list[str] = ()):
    from condattn.train.recipe import load_recipe

    sets = [
        f"model.variant={args.variant}",
        f"optim.batch_size={args.batch}",
        "system.progress=off",
    ]
    return load_recipe(str(REPO / "recipes" / "quick.toml"), [*sets, *extra])


def _data(cfg, args: argparse.Namespace):
    from condattn.data import find_cifar100
    from condattn.train.build import load_data

    synthetic = args.synthetic or find_cifar100() is None
    return load_data(cfg, synthetic=synthetic), synthetic


def _cycle(loader):
    """The loader's batches epoch after epoch, as training sees them."""
    for epoch in itertools.count():
        yield from loader.epoch(epoch)


def _ours(args: argparse.Namespace, *, in_memory: bool = False, sets: list[str] = ()):
    """condattn's default path; returns ``(run_steps(n), info)``."""
    import torch

    from condattn import _omp_env
    from condattn.train import distributed as D
    from condattn.train import loop
    from condattn.train.metrics import MetricSums

    cfg = _config(args, sets)
    data, synthetic = _data(cfg, args)
    device = torch.device("cpu")
    # As loop.train() does: the plan for this run's length, its threads, the run's objects.
    steps = cfg.optim.epochs * (int(data.train_images.shape[0]) // cfg.optim.batch_size)
    plan = loop.speed_plan(cfg, device, steps=steps)
    state = loop._global_torch_state(cfg, device, plan)
    state.__enter__()  # held for the worker's life (run_steps keeps it referenced)
    run_dir = Path(tempfile.mkdtemp(prefix="loop_vs_reference_"))
    run = loop._build(cfg, data=data, run_dir=run_dir, env=D.DistEnv(), device=device, plan=plan)
    net, _eval_net = loop._nets(run)
    batches = _cycle(run.train_loader)
    if in_memory:
        batches = itertools.repeat(next(batches))
    net.train()

    def run_steps(n: int, _state=state) -> dict[str, Any]:
        sums = MetricSums(num_aux=run.num_aux, device=device)
        loop._train_steps(run, net, itertools.islice(batches, n), sums=sums)
        sums.means()  # the once-per-epoch read of the metrics
        changes = run.governor.changes if run.governor is not None else []
        return {"threads": torch.get_num_threads(), "thread_changes": len(changes)}

    info = {
        "plan": plan.to_dict(),
        "thread_env": _omp_env.thread_env_record(),
        "torch_threads": torch.get_num_threads(),
        "data": data.source,
        "synthetic": synthetic,
    }
    return run_steps, info


def _reference(args: argparse.Namespace):
    """A plain eager loop with a torchvision PIL DataLoader; returns ``(run_steps(n), info)``."""
    import torch
    from data_pipeline import pil_loader

    from condattn.train.build import as_output, build_loss, build_model, build_optimizer

    cfg = _config(args)
    data, synthetic = _data(cfg, args)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=data.num_classes)
    criterion, optimizer = build_loss(cfg), build_optimizer(cfg, model)
    loader = pil_loader(
        data.train_images,
        data.train_labels,
        batch_size=args.batch,
        device=torch.device("cpu"),
        workers=2,
        drop_last=True,
    )
    batches = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())
    model.train()

    def run_steps(n: int) -> dict[str, Any]:
        for x, y in itertools.islice(batches, n):
            out = as_output(model(x))
            loss = criterion(out, y).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return {"threads": torch.get_num_threads()}

    info = {
        "torch_threads": torch.get_num_threads(),
        "data": data.source,
        "synthetic": synthetic,
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
    }
    return run_steps, info


def worker(args: argparse.Namespace) -> int:
    """Serves ``run N`` requests on stdin with one JSON line each (seconds for N steps)."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO))
    spec = SPECS[args.worker]
    if spec["kind"] == "reference":
        run_steps, info = _reference(args)
    else:
        run_steps, info = _ours(
            args, in_memory=spec.get("in_memory", False), sets=spec.get("sets", [])
        )
    print(json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        t0 = time.perf_counter()
        state = run_steps(int(cmd[1]))
        print(json.dumps({"seconds": time.perf_counter() - t0, **state}), flush=True)
    return 0


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        from condattn import _omp_env

        spec = SPECS[name]
        env = {**os.environ, **spec.get("env", {})}
        if spec["kind"] == "ours" and spec.get("thread_env", True):
            _omp_env.apply_thread_env(env)  # what the `condattn` command does before torch loads
        cmd = [sys.executable, __file__, "--worker", name, "--variant", args.variant]
        cmd += ["--batch", str(args.batch)] + (["--synthetic"] if args.synthetic else [])
        self.name = name
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        self.info: dict[str, Any] = {}
        self.states: list[dict[str, Any]] = []  # the thread count after each request

    def _reply(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.poll()})")
        return json.loads(line)

    def wait_ready(self) -> None:
        self.info = self._reply()["ready"]

    def run(self, steps: int) -> float:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        reply = self._reply()
        self.states.append({k: v for k, v in reply.items() if k != "seconds"})
        return reply["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


# --- the parent ------------------------------------------------------------------------------


def machine_load(seconds: float = 0.2) -> float:
    """Cores kept busy on this machine over ``seconds`` (``/proc/stat``), by all processes."""
    from condattn.train.governor import _busy_seconds

    cpus = range(os.cpu_count() or 1)
    stat = Path("/proc/stat")
    b0 = _busy_seconds(stat.read_text(), cpus)
    time.sleep(seconds)
    return (_busy_seconds(stat.read_text(), cpus) - b0) / seconds


def settle(baseline: float, *, limit_s: float = 5.0) -> None:
    """Waits until the machine's load is back to ``baseline`` cores (+0.3): the reference's
    DataLoader workers keep prefetching after its turn, and would run in the next one's."""
    if not Path("/proc/stat").is_file():
        time.sleep(1.0)
        return
    t0 = time.perf_counter()
    while machine_load() > baseline + 0.3 and time.perf_counter() - t0 < limit_s:
        pass


def rounds(
    workers: list[Worker], *, steps: int, repeats: int, log, baseline: float = 0.0
) -> dict[str, list[float]]:
    """``repeats`` rounds of ``steps`` steps per worker, one worker at a time, first rotating;
    each turn starts once the machine is back to ``baseline`` load (:func:`settle`)."""
    times: dict[str, list[float]] = {w.name: [] for w in workers}
    for r in range(repeats):
        k = r % len(workers)
        for w in workers[k:] + workers[:k]:
            settle(baseline)
            times[w.name].append(w.run(steps))
        log(
            f"  round {r + 1}/{repeats}: "
            + ", ".join(
                f"{w.name} {times[w.name][-1]:.2f}s/{w.states[-1]['threads']}t" for w in workers
            )
        )
    return times


def _paired(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``time[num] / time[den]`` (a speed-up of ``den`` over ``num``)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def _summary(times: dict[str, list[float]], images: int) -> dict[str, Any]:
    out = {}
    for name, ts in times.items():
        ips = sorted(images / t for t in ts)
        out[name] = {"img_per_s_median": statistics.median(ips), "img_per_s": ips, "times_s": ts}
    for name in times:
        if name != "reference" and "reference" in times:
            out[name]["speedup_vs_reference"] = _paired(times, "reference", name)
    if {"condattn", "condattn_mem"} <= set(times):
        out["condattn"]["data_pipeline_share"] = 1 - 1 / _paired(times, "condattn", "condattn_mem")
    return out


def _busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _markdown(res: dict[str, Any], cond_line: str) -> str:
    import _common as C

    phases = [p for p in ("quiet", "busy") if p in res]
    rows = []
    quiet_default = res["quiet"]["condattn"]["img_per_s_median"]
    for name in res["quiet"]:
        row = [name]
        for p in phases:
            r = res[p][name]
            row.append(f"{r['img_per_s_median']:.0f}")
            row.append(f"{r['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in r else "1")
        if "busy" in res:
            q, b = res["quiet"][name], res["busy"][name]
            row.append(f"{b['img_per_s_median'] / q['img_per_s_median']:.2f}")
            row.append(f"{b['img_per_s_median'] / quiet_default:.2f}")
        rows.append(row)
    head = ["variant"]
    for p in phases:
        head += [f"{p} img/s (median)", f"{p} vs reference (same-round)"]
    head += ["busy / quiet", "busy / condattn quiet"] if "busy" in res else []
    plan = res["workers"]["condattn"]["plan"]
    share = res["quiet"]["condattn"].get("data_pipeline_share")
    return (
        f"Conditions: {cond_line}\n\n"
        + C.md_table(head, rows)
        + f"\n\ncondattn's plan: precision {plan['precision']}, channels_last "
        f"{plan['channels_last']}, compile {plan['compile']}, threads {plan['threads']} "
        f"({'; '.join(f'{k}: {v}' for k, v in plan['why'].items())}).\n\n"
        + (
            f"Data pipeline share of condattn's step (quiet): {100 * share:.1f}%.\n\n"
            if share
            else ""
        )
        + f"Data: {res['workers']['condattn']['data']}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="se", choices=("se", "se_a", "se_r"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="train steps per variant per round")
    p.add_argument("--repeats", type=int, default=7, help="rounds per phase")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per worker first")
    p.add_argument("--no-busy", dest="busy", action="store_false", help="skip the busy phase")
    p.add_argument("--synthetic", action="store_true", help="synthetic data even if CIFAR exists")
    p.add_argument("--quick", action="store_true", help="2 rounds of 4 steps: checks it works")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument(
        "--policies",
        action="store_true",
        help=f"also time condattn's loop under other thread settings: {', '.join(POLICIES)}",
    )
    p.add_argument("--worker", choices=list(SPECS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.steps, args.repeats, args.warmup = 4, 2, 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the busy loop, workers
    sys.path.insert(0, str(HERE))
    import _common as C
    import torch

    device = torch.device("cpu")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    names = [*VARIANTS, *(POLICIES if args.policies else ())]
    workers = [Worker(name, args) for name in names]
    busy = None
    try:
        for w in workers:
            w.wait_ready()
            log(f"{w.name} ready: {json.dumps(w.info)}")
        for w in workers:  # one at a time, so that each warms up undisturbed
            w.run(args.warmup)
        cond = C.conditions(
            device,
            variant=args.variant,
            batch=args.batch,
            steps=args.steps,
            repeats=args.repeats,
            synthetic=workers[1].info["synthetic"],
        )
        log(C.conditions_line(cond))
        images = args.steps * args.batch
        log("quiet phase")
        res: dict[str, Any] = {
            "quiet": _summary(
                rounds(workers, steps=args.steps, repeats=args.repeats, log=log), images
            )
        }
        if args.busy:
            busy = _busy_loop()
            time.sleep(1.0)
            log(f"busy phase (competing busy loop, pid {busy.pid})")
            res["busy"] = _summary(
                rounds(workers, steps=args.steps, repeats=args.repeats, log=log, baseline=1.0),
                images,
            )
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        for w in workers:
            w.close()
    res["workers"] = {w.name: {**w.info, "after_each_request": w.states} for w in workers}
    res["loadavg_end"] = C.conditions(device)["loadavg_1_5_15"]
    res["wall_s"] = time.perf_counter() - t_start
    text = _markdown(res, C.conditions_line(cond))
    print("\n" + text)
    payload = {"conditions": cond, "args": vars(args), **res}
    print("wrote", *C.write_results("loop_vs_reference", device, payload, text, out=args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
