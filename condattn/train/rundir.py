"""Run directories: their states, the config diff, and the keys in which a run may differ.

One definition, used by ``condattn train`` (what to refuse before training), :func:`train`
(whether a checkpoint may be resumed under this config) and the comparison grid (which runs to
reuse, resume or train). A run directory (see :mod:`condattn.train.loop`) is in one of four
states, read from its files alone (:func:`run_state`):

- :attr:`RunState.EMPTY`: no run there (the folder may not exist);
- :attr:`RunState.UNSTARTED`: a run started but stopped before its first checkpoint: nothing
  to resume, train it again from scratch;
- :attr:`RunState.STARTED`: ``checkpoint.pt`` but no ``results.json``: running, or killed;
  resume it;
- :attr:`RunState.FINISHED`: ``results.json`` (and its last checkpoint, without the optimizer
  state unless ``system.keep_optimizer``): reuse it, or resume it for more epochs.

:func:`open_run_dir` writes what a start of :func:`train` writes first (the config, this
start's ``environment.json`` entry, the metrics its checkpoint covers) and
:func:`results_record` the content of ``results.json`` (:func:`val_chosen`: the epoch chosen on
the val split).

A run directory is *incompatible* with a config when :func:`config_diff` finds a difference
outside :data:`MAY_DIFFER` for what is being done (``"reuse"`` a run as it is, or ``"resume"``
it); every caller refuses it with a message that names the differing keys.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any, Literal

from condattn._io import atomic_write_text
from condattn.train.checkpoint import CHECKPOINT_NAME
from condattn.train.metrics import read_jsonl, write_json, write_jsonl

__all__ = [
    "MAY_DIFFER",
    "RUN_FILES",
    "RunState",
    "clear_run",
    "config_diff",
    "kept_steps_hint",
    "may_differ",
    "open_run_dir",
    "results_message",
    "results_record",
    "run_state",
    "saved_config",
    "val_chosen",
]

Purpose = Literal["reuse", "resume"]

# The config keys in which a run directory may differ from the asked config, and for what.
# reuse: take a run (finished or to be resumed) as the asked one; its keys must be the asked
# run's except those that change how it executes, not what it computes. resume: continue a
# checkpoint under this config (:func:`condattn.train.train`); the trajectory must not change,
# so the thread count stays (bit-identical resumes), but a run may be extended (more epochs).
MAY_DIFFER: dict[str, frozenset[str]] = {
    "name": frozenset({"resume"}),  # a label; the grid names its runs, so it checks it
    "system.progress": frozenset({"reuse", "resume"}),  # the console only
    "system.threads": frozenset({"reuse"}),  # speed only; a resumed run keeps its own count
    "system.keep_optimizer": frozenset({"reuse", "resume"}),  # what a finished run keeps
    "optim.epochs": frozenset({"resume"}),  # resuming may extend a run
}

# What a run writes that would carry over into a new run in the same directory (config.json,
# config.toml and curves.png are rewritten by every start).
RUN_FILES = (CHECKPOINT_NAME, "metrics.jsonl", "results.json", "environment.json")


class RunState(str, enum.Enum):
    """The state of a run directory; the values are the comparison grid's words for them."""

    EMPTY = "new"
    UNSTARTED = "restart"
    STARTED = "resume"
    FINISHED = "done"

    def __str__(self) -> str:
        return self.value


def run_state(run_dir: str | Path) -> RunState:
    """The state of ``run_dir`` (see the module docstring), from its files."""
    d = Path(run_dir)
    if (d / "results.json").is_file():
        return RunState.FINISHED
    if (d / CHECKPOINT_NAME).exists():
        return RunState.STARTED
    if (d / "metrics.jsonl").exists():
        return RunState.UNSTARTED
    return RunState.EMPTY


def saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's resolved config (``config.json``) as a dict, or None without one."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def may_differ(purpose: Purpose) -> list[str]:
    """The keys that may differ for ``purpose``, sorted (for messages)."""
    return sorted(k for k, why in MAY_DIFFER.items() if purpose in why)


def config_diff(
    asked: dict[str, Any], saved: dict[str, Any], *, purpose: Purpose
) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, asked value)`` for every key of ``asked`` that differs in ``saved``
    and may not differ for ``purpose`` (:data:`MAY_DIFFER`).

    Both are :meth:`TrainConfig.to_dict` dicts. A key missing from ``saved`` (a run made before
    that field existed, e.g. ``model.kwargs`` or ``data.dataset``) counts as the field's default.
    """
    from condattn.train.config import TrainConfig

    defaults = TrainConfig().to_dict()
    allowed = set(may_differ(purpose))
    diffs = []
    for section, values in asked.items():
        if not isinstance(values, dict):  # the run's name
            if section not in allowed and saved.get(section) != values:
                diffs.append((section, saved.get(section), values))
            continue
        for key, value in values.items():
            have = saved.get(section, {}).get(key, defaults.get(section, {}).get(key))
            if f"{section}.{key}" == "optim.milestones":
                old, new = (_steps(o, defaults["optim"]) for o in (saved.get("optim", {}), values))
                if old == new:
                    continue
                if have == value:  # the same fractions of another length: say what they give
                    have, value = (
                        f"{have} of {o.get('epochs', defaults['optim']['epochs'])} epochs: lr "
                        f"steps after epochs {list(steps)}"
                        for o, steps in ((saved.get("optim", {}), old), (values, new))
                    )
            elif f"{section}.{key}" in allowed or have == value:
                continue
            diffs.append((f"{section}.{key}", have, value))
    return diffs


def _steps(optim: dict[str, Any], default: dict[str, Any]) -> tuple[int, ...]:
    """The epochs after which an ``[optim]`` table decays the lr. Milestones given as fractions
    of the run (``[0.3, 0.6, 0.8]`` of 15) and as the epochs they resolve to (``[5, 9, 12]``)
    describe one schedule. Each table resolves with its own ``optim.epochs``, so extending a run
    whose steps are fractions moves them, and that is a real difference."""
    from types import SimpleNamespace

    from condattn.train.config import milestone_epochs

    get = lambda k: optim.get(k, default[k])  # noqa: E731
    return milestone_epochs(SimpleNamespace(milestones=get("milestones"), epochs=get("epochs")))


def kept_steps_hint(saved: dict[str, Any], diffs: list[tuple[str, Any, Any]]) -> str:
    """For a refused resume whose ``diffs`` include the lr steps (a run whose steps are fractions
    of it, resumed for more epochs): the override that keeps ``saved``'s own steps; else ""."""
    from condattn.train.config import TrainConfig

    if not any(key == "optim.milestones" for key, _, _ in diffs):
        return ""
    steps = _steps(saved.get("optim", {}), TrainConfig().to_dict()["optim"])
    return (
        "; to extend it with the lr steps it was trained with: "
        f'--set "optim.milestones=[{", ".join(map(str, steps))}]"'
    )


def clear_run(run_dir: str | Path) -> None:
    """Removes :data:`RUN_FILES` (``--overwrite``): the directory is then EMPTY."""
    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)


def open_run_dir(
    run_dir: Path, cfg: Any, *, start: dict[str, Any], resume: bool, epochs_done: int
) -> list[dict[str, Any]]:
    """Writes the config and this start's ``environment.json`` entry (``start``, appended to the
    earlier starts' when resuming); keeps the metrics the checkpoint covers and returns them.

    Args:
        run_dir: the run directory (created if missing).
        cfg: the run's :class:`~condattn.train.config.TrainConfig`.
        start: this start's provenance, speed plan and first epoch.
        resume: this start continues a checkpoint.
        epochs_done: the epochs the checkpoint covers (0 for a fresh run).
    """
    from condattn.train.recipe import config_to_toml

    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "config.json", cfg.to_dict())
    atomic_write_text(d / "config.toml", config_to_toml(cfg))
    starts = []
    if resume and (d / "environment.json").exists():
        starts = json.loads((d / "environment.json").read_text()).get("starts", [])
    write_json(d / "environment.json", {"starts": [*starts, start]})
    # Drop lines of epochs the checkpoint does not cover (killed after logging them).
    history = [r for r in read_jsonl(d / "metrics.jsonl") if r["epoch"] <= epochs_done]
    write_jsonl(d / "metrics.jsonl", history)
    return history


def val_chosen(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the highest val top-1 (the earliest of ties) and its test numbers, or None
    when the run has no val split (``data.val_fraction = 0``).

    Without a val split no epoch is chosen at all: the epoch with the best TEST accuracy is not
    a selection but a look at the test set, so it is not reported anywhere.
    """
    rows = [r for r in history if r.get("val_top1") is not None]
    if not rows:
        return None
    best = max(rows, key=lambda r: (r["val_top1"], -r["epoch"]))
    return {
        "epoch": best["epoch"],
        "val_top1": best["val_top1"],
        "val_top5": best.get("val_top5"),
        "top1": best["test_top1"],
        "top5": best["test_top5"],
        "test_loss": best.get("test_loss"),
    }


def results_message(results: dict[str, Any], run_dir: Path) -> str:
    """The run's last console line: the final (reported) test accuracy, and the val-chosen one."""
    chosen = results["val_chosen"]
    also = (
        f"; at the epoch chosen on val ({chosen['epoch']}, val top1 {chosen['val_top1']:.2f}) "
        f"test top1 {chosen['top1']:.2f}"
        if chosen
        else ""
    )
    return (
        f"final (reported) test top1 {results['final']['top1']:.2f} top5 "
        f"{results['final']['top5']:.2f}{also}; results in {run_dir}"
    )


def results_record(
    cfg: Any,
    history: list[dict[str, Any]],
    *,
    params: int,
    data: Any,
    world_size: int,
) -> dict[str, Any]:
    """The content of ``results.json``: the test accuracy at the final epoch (the reported
    number) and, with a val split, at the epoch chosen on val (:func:`val_chosen`); the paper's
    number and what the run was."""
    last = history[-1] if history else {}
    paper = cfg.paper.top1 or None
    final_top1 = last.get("test_top1")
    has_val = getattr(data, "val_images", None) is not None
    return {
        "name": cfg.name,
        "arch": cfg.model.arch,
        "variant": cfg.model.variant,
        "aux_weights": list(cfg.loss.aux_weights),
        "seed": cfg.system.seed,
        "epochs": cfg.optim.epochs,
        "reported": "final",
        "final": {
            "epoch": last.get("epoch"),
            "top1": final_top1,
            "top5": last.get("test_top5"),
            "test_loss": last.get("test_loss"),
            **({"val_top1": last.get("val_top1")} if has_val else {}),
        },
        "val_chosen": val_chosen(history),
        "paper": {"tables": list(cfg.paper.tables), "row": cfg.paper.row, "top1": paper},
        "delta_vs_paper": (final_top1 - paper) if paper and final_top1 is not None else None,
        "params": params,
        "data_source": data.source,
        "num_train": int(data.train_images.shape[0]),
        "num_val": int(data.val_images.shape[0]) if has_val else 0,
        "num_test": int(data.test_images.shape[0]),
        "world_size": world_size,
        "total_time_s": sum(r["epoch_time_s"] for r in history),
    }
