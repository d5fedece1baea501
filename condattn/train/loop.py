"""The train/eval loop: one function, :func:`train`, that writes a complete run directory.

Run directory (written by rank 0 only)::

    config.json, config.toml   the resolved config (explicit lossW etc.)
    environment.json           device, torch, git SHA, threads, host, and the speed plan
                               (precision, channels_last, compile, threads: why each) per start
    metrics.jsonl              one line per epoch (losses, lr, train/test top-1/top-5, timings;
                               val top-1/top-5 with a val split)
    tensorboard/, .lock        TensorBoard events per epoch; the one trainer's flock (train.lock)
    checkpoint.pt              written atomically after every epoch; ``resume=True`` continues it;
                               once finished, without the optimizer state (system.keep_optimizer)
    curves.png                 train and test top-1 error vs epoch (paper Figs. 3-5)
    results.json               the test accuracy at the final epoch (the reported number; the
                               paper does not say which it reports) and, with a val split
                               (data.val_fraction), at the epoch chosen on val; never at an
                               epoch chosen on the test set (rundir.results_record)

Epochs are numbered from 1 wherever a user sees them: the console, ``metrics.jsonl``,
``results.json``, ``environment.json``'s ``start_epoch``, the plots, and the checkpoint's
``epoch`` (the number of epochs finished). Milestones count finished epochs (lr /5 after 60, i.e.
from epoch 61). Only the loop's internal index ``e`` below, which seeds the data order and the
dropout, counts from 0.

Determinism: the data order and augmentation of epoch ``e`` depend only on ``(seed, e)``
(:class:`~condattn.data.TensorLoader`), and torch's global RNG (dropout in the aux heads) is
reseeded from ``(seed, e)`` at the start of every epoch. With ``system.deterministic=true`` and a
fixed ``system.threads``, a run killed at any point and resumed from its last checkpoint follows
exactly the trajectory of an uninterrupted run (bit-identical weights and metrics).

Speed: the precision (bf16 autocast or fp32), memory format, compile mode and thread count are
decided once per start by :func:`speed_plan` (:func:`condattn.train.speed.decide` on this
machine) and used alike by training and evaluation. A step never waits for the device:
metrics accumulate on it (:class:`~condattn.train.metrics.MetricSums`) and are read once per
epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from condattn._io import derive_seed, provenance
from condattn._omp_env import thread_env_record
from condattn.data import CifarData, TensorLoader
from condattn.losses import DeepSupervisionLoss
from condattn.profiling import count_params
from condattn.train import distributed as D
from condattn.train.build import (
    as_output,
    build_augment,
    build_loss,
    build_model,
    build_optimizer,
)
from condattn.train.checkpoint import (
    CHECKPOINT_NAME,
    apply_init_weights,
    load_checkpoint,
    read_init_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from condattn.train.config import TrainConfig, check_schedule, milestone_epochs
from condattn.train.governor import ThreadGovernor
from condattn.train.lock import RunLock
from condattn.train.metrics import MetricSums, append_jsonl, write_json
from condattn.train.preflight import conversion_record, start_lines
from condattn.train.progress import Heartbeat, epoch_message, show_progress
from condattn.train.rundir import (
    config_diff,
    kept_steps_hint,
    may_differ,
    open_run_dir,
    results_message,
    results_record,
)
from condattn.train.schedule import PaperSchedule, make_scheduler
from condattn.train.speed import SpeedPlan, decide, detect
from condattn.train.speed import global_torch_state as _global_torch_state
from condattn.train.tensorboard import EpochWriter

__all__ = ["TIMING_FIELDS", "evaluate", "speed_plan", "train"]

# Rank 0 logs one line per epoch (and progress lines without a bar) at INFO; the `condattn`
# command shows them on the console.
logger = logging.getLogger(__name__)

# Fields of a metrics.jsonl line that measure time or follow the machine's load, and so differ
# between identical runs.
TIMING_FIELDS = ("epoch_time_s", "train_time_s", "eval_time_s", "img_per_s", "threads")


def speed_plan(cfg: TrainConfig, device: torch.device, *, steps: int | None = None) -> SpeedPlan:
    """The run's speed choices: :func:`~condattn.train.speed.decide` for this machine and
    ``[system]``.

    Args:
        cfg: the config (``system.precision``, ``channels_last``, ``compile``, ``threads``).
        device: where the run computes.
        steps: the run's train steps (``compile="auto"`` compiles long runs only).
    """
    return decide(detect(device), cfg.system, steps=steps)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: TensorLoader,
    *,
    criterion: DeepSupervisionLoss,
    num_aux: int,
    plan: SpeedPlan | None = None,
) -> dict[str, Any]:
    """Test loss and top-1/top-5 (%) over the whole (sharded, all-reduced) test set.

    Runs on the training's fast path: the plan's autocast (None: fp32), with the model and the
    loader already in the plan's memory format, at the loader's (large) batch size.
    """
    plan = plan or SpeedPlan()
    model.eval()
    sums = MetricSums(num_aux=num_aux, device=loader.device)
    for x, y in loader.epoch(0):
        if y.shape[0] == 0:
            continue
        with plan.autocast(loader.device.type):
            out = as_output(model(x))
            parts = criterion(out, y)
        sums.add(logits=out.logits, target=y, loss=parts.total, main=parts.main, aux=parts.aux)
    D.all_reduce_sum(sums.sums)
    return sums.means()


def _check_resumable(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """Refuses to resume under another config (:func:`condattn.train.rundir.config_diff`)."""
    diffs = config_diff(cfg.to_dict(), saved, purpose="resume")
    if diffs:
        listed = "; ".join(f"{key}: checkpoint {old!r} != now {new!r}" for key, old, new in diffs)
        raise ValueError(
            f"cannot resume: the config differs from the checkpoint's: {listed} (only "
            f"{', '.join(may_differ('resume'))} may change; --overwrite starts over"
            f"{kept_steps_hint(saved, diffs)})"
        )


def train(
    cfg: TrainConfig,
    *,
    data: CifarData,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    lock_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Trains ``cfg`` on ``data`` and evaluates every epoch; returns the results dict.

    Args:
        cfg: the resolved config.
        data: train and test splits (uint8 images).
        run_dir: where rank 0 writes the run directory (see the module docstring).
        resume: continue from ``run_dir/checkpoint.pt`` (the config must match).
        lock_wait_s: seconds rank 0 waits for another trainer's lock (:mod:`.lock`).

    Rank 0 logs its one-line-per-epoch summaries to the ``condattn.train.loop`` logger (INFO).

    Under torchrun each process calls this; the process group is set up here.
    """
    run_dir = Path(run_dir)
    check_schedule(cfg.optim)
    env = D.detect()
    device = D.device_for(env, cfg.system.device)
    env = D.setup(device)
    steps = cfg.optim.epochs * (int(data.train_images.shape[0]) // cfg.optim.batch_size)
    plan = speed_plan(cfg, device, steps=steps)
    owner = RunLock(run_dir, wait_s=lock_wait_s) if env.is_main else contextlib.nullcontext()
    with owner, _global_torch_state(cfg, device, plan):
        state = load_checkpoint(run_dir / CHECKPOINT_NAME) if resume else None
        if state is not None:
            _check_resumable(cfg, state["config"])  # before building anything: fail fast
        init = (
            read_init_weights(cfg.model.init_from)
            if cfg.model.init_from and state is None
            else None
        )
        run = _build(cfg, data=data, run_dir=run_dir, env=env, device=device, plan=plan)
        if init is not None:  # fine-tuning: the plain model's weights (model.init_from)
            apply_init_weights(run.core, init[0], variant=cfg.model.variant, source=init[1])
            if env.is_main:
                logger.info(f"weights from {init[1]}")
        _restore(run, state, resume=resume)
        return _fit(run, data=data)


@dataclasses.dataclass
class _Run:
    """The objects of one run, built by :func:`_build` and advanced epoch by epoch."""

    cfg: TrainConfig
    env: D.DistEnv
    device: torch.device
    run_dir: Path
    core: nn.Module  # the model itself: what is checkpointed and evaluated
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: DeepSupervisionLoss
    train_loader: TensorLoader
    test_loader: TensorLoader
    val_loader: TensorLoader | None  # the val split held out of train (data.val_fraction)
    plan: SpeedPlan  # precision, memory format, compile mode, threads (speed_plan)
    # Fits the thread count to the cores other processes leave free (plan.adapt_threads).
    governor: ThreadGovernor | None = None
    start_epoch: int = 0  # the internal (0-based) index of the first epoch to run = epochs done
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tb: EpochWriter | None = None  # rank 0's TensorBoard event files

    @property
    def num_aux(self) -> int:
        return len(self.cfg.loss.aux_weights)


def _build(
    cfg: TrainConfig,
    *,
    data: CifarData,
    run_dir: Path,
    env: D.DistEnv,
    device: torch.device,
    plan: SpeedPlan,
) -> _Run:
    """Step 1: the model (seeded init), optimiser, loss, loaders and the paper's schedule.

    The data stays on ``device`` as uint8 and is augmented there, in the plan's memory format.
    """
    s, o = cfg.system, cfg.optim
    torch.manual_seed(s.seed)  # the model init
    core = build_model(cfg, num_classes=data.num_classes).to(device)
    cl = plan.channels_last
    if cl:
        core = core.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, core)
    common = {"seed": s.seed, "device": device, "rank": env.rank, "world_size": env.world_size}
    train_loader = TensorLoader(
        data.train_images,
        data.train_labels,
        batch_size=o.batch_size,
        shuffle=True,
        drop_last=True,  # equal per-rank batches every step (DDP averages gradients)
        augment=build_augment(cfg, train=True, data=data, channels_last=cl),
        **common,
    )
    eval_bs = max(env.world_size, s.eval_batch_size // env.world_size * env.world_size)
    eval_augment = build_augment(cfg, train=False, data=data, channels_last=cl)
    test_loader, val_loader = (
        TensorLoader(x, y, batch_size=eval_bs, shuffle=False, augment=eval_augment, **common)
        if x is not None
        else None
        for x, y in ((data.test_images, data.test_labels), (data.val_images, data.val_labels))
    )
    schedule = PaperSchedule(
        steps_per_epoch=len(train_loader),
        warmup_epochs=o.warmup_epochs,
        milestones=milestone_epochs(o),
        gamma=o.gamma,
    )
    return _Run(
        cfg=cfg,
        env=env,
        device=device,
        run_dir=run_dir,
        core=core,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, schedule),
        criterion=build_loss(cfg),
        train_loader=train_loader,
        test_loader=test_loader,
        val_loader=val_loader,
        plan=plan,
        governor=ThreadGovernor(plan.threads, cpus=plan.capabilities["cpus"])
        if plan.adapt_threads
        else None,
    )


def _restore(run: _Run, state: dict[str, Any] | None, *, resume: bool) -> None:
    """Step 2: continue from a checkpoint's ``state`` (if any); rank 0 opens the run dir."""
    if state is not None:
        run.core.load_state_dict(state["model"])
        if "optimizer" in state:
            run.optimizer.load_state_dict(state["optimizer"])
        elif run.env.is_main:  # a finished run's checkpoint (system.keep_optimizer = false)
            logger.info(
                "extending a finished run: its checkpoint keeps no optimizer state, so SGD's "
                "momentum restarts from zero (system.keep_optimizer = true keeps it)"
            )
        run.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        run.start_epoch = state["epoch"]  # epochs finished
    if run.env.is_main:
        entry = {
            **provenance(run.device, world_size=run.env.world_size, argv=sys.argv),
            "start_epoch": run.start_epoch + 1,  # the first epoch this start runs (1-based)
            "resumed": resume,
            "speed": run.plan.to_dict(),  # the start-up choices, why, and the capabilities read
            "thread_env": thread_env_record(),
        }
        run.history = open_run_dir(
            run.run_dir, run.cfg, start=entry, resume=resume, epochs_done=run.start_epoch
        )
    D.barrier()


def _fit(run: _Run, *, data: CifarData) -> dict[str, Any]:
    """Steps 3-5 for every remaining epoch, then the results (rank 0 writes results.json)."""
    cfg, env = run.cfg, run.env
    net, eval_net = _nets(run)
    params = count_params(run.core)
    log = logger.info if env.is_main else (lambda msg: None)  # ranks > 0 say nothing
    log(
        f"model {cfg.model.arch} variant={cfg.model.variant} params={params / 1e6:.3f}M "
        f"device={run.device} world_size={env.world_size} run_dir={run.run_dir}"
    )
    log(f"data: {data.source}")
    if env.is_main:  # the lr steps, the heads' placement and routes, inputs too small
        size, n = tuple(data.image_size), data.num_classes
        for level, line in start_lines(cfg, run.core, num_classes=n, image_size=size):
            logger.log(level, line)
    show = show_progress(cfg.system.progress, is_main=env.is_main)
    t_run = time.perf_counter()
    epochs = range(run.start_epoch, cfg.optim.epochs)
    for epoch in tqdm(
        epochs, desc="epochs", disable=not show, initial=run.start_epoch, total=cfg.optim.epochs
    ):
        row = _run_epoch(run, net, eval_net, epoch, show=show)
        _record(run, row)
        log(epoch_message(row, epochs=cfg.optim.epochs))
        D.barrier()
    results = results_record(cfg, run.history, params=params, data=data, world_size=env.world_size)
    results["wall_time_s_this_start"] = time.perf_counter() - t_run
    results["conversion"] = conversion_record(run.core)  # where the heads went, what they feed
    if env.is_main:
        write_json(run.run_dir / "results.json", results)
        if not cfg.system.keep_optimizer:  # finished: the weights are what is left to use
            _checkpoint(run, results["final"]["epoch"] or run.start_epoch, optimizer=False)
        log(results_message(results, run.run_dir))
    D.barrier()
    return results


def _nets(run: _Run) -> tuple[nn.Module, nn.Module]:
    """What trains (the DDP-wrapped model) and what evaluates (the model itself), each compiled
    when the plan says so (evaluation gets its own graph: it runs in eval mode)."""
    net: nn.Module = D.wrap_ddp(run.core, run.env, run.device)
    mode = run.plan.compile
    if mode == "off":
        return net, run.core
    options = {} if mode == "default" else {"mode": mode}
    return torch.compile(net, **options), torch.compile(run.core, **options)


def _run_epoch(
    run: _Run,
    net: nn.Module,
    eval_net: nn.Module,
    epoch: int,
    *,
    show: bool,
) -> dict[str, Any]:
    """One epoch: train (step 3), evaluate (step 4); returns its metrics.jsonl row."""
    t0 = time.perf_counter()
    tr, lr_start, lr_last = _train_epoch(run, net, epoch, show=show)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    t_train = time.perf_counter() - t0
    ev = {"criterion": run.criterion, "num_aux": run.num_aux, "plan": run.plan}
    te = evaluate(eval_net, run.test_loader, **ev)
    va = evaluate(eval_net, run.val_loader, **ev) if run.val_loader is not None else None
    t_epoch = time.perf_counter() - t0
    val = {"val_loss": va["loss"], "val_top1": va["top1"], "val_top5": va["top5"]} if va else {}
    return {
        "epoch": epoch + 1,  # 1-based, as everywhere a user sees it
        "loss": tr["loss"],
        "main_loss": tr["main_loss"],
        "aux_losses": tr["aux_losses"],
        "lr": lr_start,  # the first step's lr (warm-up: tiny in epoch 1)
        "lr_last": lr_last,
        "train_top1": tr["top1"],
        "train_top5": tr["top5"],
        "test_loss": te["loss"],
        "test_main_loss": te["main_loss"],
        "test_top1": te["top1"],
        "test_top5": te["top5"],
        **val,
        "epoch_time_s": t_epoch,
        "train_time_s": t_train,
        "eval_time_s": t_epoch - t_train,
        "img_per_s": tr["n"] / t_train,
        "threads": torch.get_num_threads(),  # at the epoch's end (the governor may change it)
    }


def _train_epoch(
    run: _Run, net: nn.Module, epoch: int, *, show: bool
) -> tuple[dict[str, Any], float, float]:
    """Step 3: one pass over the training set; returns the (all-reduced) means and the lrs of
    the first and the last step. Without a bar, rank 0 logs progress
    (:class:`~condattn.train.progress.Heartbeat`)."""
    torch.manual_seed(derive_seed(run.cfg.system.seed, "torch", epoch))  # dropout: (seed, epoch)
    net.train()
    sums = MetricSums(num_aux=run.num_aux, device=run.device)
    lr_start = run.optimizer.param_groups[0]["lr"]
    steps = tqdm(
        run.train_loader.epoch(epoch),
        total=len(run.train_loader),
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=not show,
    )
    beat = None
    if run.env.is_main and not show:
        steps_n, world = len(run.train_loader), run.env.world_size
        beat = Heartbeat(epoch, epochs=run.cfg.optim.epochs, steps=steps_n, world_size=world)
    lr_last = _train_steps(run, net, steps, sums=sums, on_step=beat)
    D.all_reduce_sum(sums.sums)
    return sums.means(), lr_start, lr_last


def _train_steps(
    run: _Run,
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    sums: MetricSums,
    on_step: Callable[[int, MetricSums], None] | None = None,
) -> float:
    """The train steps over ``batches`` (forward and loss under the plan's autocast, backward,
    SGD, scheduler), accumulating into ``sums`` on the device; no host sync. Returns the lr of
    the last step. ``benchmarks/loop_vs_reference.py`` times this same function."""
    optimizer = run.optimizer
    lr = optimizer.param_groups[0]["lr"]
    for step, (x, y) in enumerate(batches, start=1):
        lr = optimizer.param_groups[0]["lr"]
        with run.plan.autocast(run.device.type):
            out = as_output(net(x))
            parts = run.criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        run.scheduler.step()
        sums.add(logits=out.logits, target=y, loss=parts.total, main=parts.main, aux=parts.aux)
        if on_step is not None:
            on_step(step, sums)
        if run.governor is not None:
            run.governor.poll()  # a clock check; measures every few seconds
    return lr


def _record(run: _Run, row: dict[str, Any]) -> None:
    """Step 5: rank 0 appends the row, redraws the curves, checkpoints."""
    run.history.append(row)
    if not run.env.is_main:
        return
    append_jsonl(run.run_dir / "metrics.jsonl", row)
    run.tb = run.tb or EpochWriter(run.run_dir)
    run.tb.log_epoch(row, last=row["epoch"] == run.cfg.optim.epochs)  # closes after the last
    _plot(run.run_dir, run.history, run.cfg)
    _checkpoint(run, row["epoch"])


def _checkpoint(run: _Run, epoch: int, *, optimizer: bool = True) -> None:
    """Writes ``checkpoint.pt`` after ``epoch`` (epochs finished). ``optimizer=False``: a
    finished run's file, without SGD's momentum (as large as the weights); the rest, a few kB
    beyond the weights, still lets ``--resume`` extend the run."""
    state = {
        "model": run.core.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epoch,  # epochs finished (resume runs index epoch next)
        "rng": rng_state(),
        "config": run.cfg.to_dict(),
    }
    if optimizer:
        state["optimizer"] = run.optimizer.state_dict()
    save_checkpoint(run.run_dir / CHECKPOINT_NAME, state)


def _plot(run_dir: Path, history: list[dict[str, Any]], cfg: TrainConfig) -> None:
    from condattn.train.plots import plot_curves  # deferred: matplotlib import is slow

    plot_curves(history, run_dir / "curves.png", title=f"{cfg.name} ({cfg.model.variant})")
