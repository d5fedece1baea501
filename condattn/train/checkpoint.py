"""Atomic, resumable checkpoints: state dicts + RNG states + the resolved config (no pickled
modules, so a checkpoint loads into a freshly built model of the same config).

A checkpoint holds tensors and plain data only (the numpy and Python RNG states are stored as
tensors and lists), so every file is read with ``torch.load(weights_only=True)``: a file from
someone else cannot run code. A file that is not a checkpoint raises :class:`CheckpointError`,
a ``ValueError`` whose one-line message names the file and what is wrong with it.

:func:`model_from_checkpoint` is the one way back from a run checkpoint to a model
(``condattn eval`` uses it); :func:`load_model` wraps it for ``condattn analyze``, which also
reads :func:`condattn.save` files.
"""

from __future__ import annotations

import json
import os
import random
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from condattn._io import atomic_torch_save
from condattn.models import create_model
from condattn.train.build import build_model
from condattn.train.config import VARIANT_LABELS, TrainConfig
from condattn.train.recipe import config_from_dict
from condattn.transform.serialization import is_saved_model, load_base_state_dict
from condattn.transform.serialization import load as load_converted

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "LoadedModel",
    "apply_init_weights",
    "checkpoint_file",
    "file_kind",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "read_init_weights",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
# 2: RNG states as tensors/lists (weights_only loads), "epoch" = epochs finished (1-based).
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A file that is not a readable condattn checkpoint; the message is one line."""


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain data."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),  # 624 uint32 words
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),  # 624 words + the index
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned (bit for bit)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with one-line errors.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is empty, not a ``torch.save`` archive (corrupt, truncated or
            another format), or holds pickled objects beyond tensors and plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (not a torch.save archive: corrupt, truncated "
            "or another format)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4"
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a foreign or damaged file
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(
                f"{path}: holds pickled Python objects ({found.group(1)}), which condattn "
                "does not load from files (weights_only=True); it was written by another "
                "program or by condattn before checkpoint format 2"
            ) from None
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"{path}: damaged PyTorch archive ({type(err).__name__}: {first})"
        ) from None


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Writes ``state`` (plus the format version) with ``torch.save``, atomically.

    A crash leaves either the old or the new checkpoint, never a torn one
    (:func:`condattn._io.atomic_torch_save`).
    """
    atomic_torch_save({"format_version": FORMAT_VERSION, **state}, path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Loads a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        CheckpointError: the file is not a condattn run checkpoint (one-line message).
    """
    path = checkpoint_file(path)
    return _check_run_checkpoint(path, read_torch_file(path))


_RUN_KEYS = ("format_version", "model", "config", "epoch")


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The checkpoint a user names: ``path`` itself, or ``checkpoint.pt`` in a run directory."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def file_kind(payload: Any) -> Literal["run", "saved", "state_dict", "unknown"]:
    """What a loaded file holds, the one place condattn tells its files apart.

    ``"run"``: a run checkpoint (:func:`save_checkpoint`; checked further by
    :func:`load_checkpoint`); ``"saved"``: a converted model written by :func:`condattn.save`
    (state_dict + conversion config); ``"state_dict"``: a plain dict of tensors
    (``torch.save(model.state_dict())``); ``"unknown"``: anything else.
    """
    if not isinstance(payload, dict) or not payload:
        return "unknown"
    if "format_version" in payload:
        return "run"
    if is_saved_model(payload):
        return "saved"
    if all(isinstance(v, Tensor) for v in payload.values()):
        return "state_dict"
    return "unknown"


def _check_run_checkpoint(path: Path, state: Any) -> dict[str, Any]:
    if file_kind(state) == "saved":
        raise CheckpointError(
            f"{path}: a condattn.save file, not a run checkpoint; condattn analyze reads it "
            "(with --arch)"
        )
    missing = [k for k in _RUN_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a condattn checkpoint (no {', '.join(missing)} entry)")
    version = state["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version}, but this condattn reads format {FORMAT_VERSION}"
        )
    return state


def _misfit(err: RuntimeError) -> str:
    """The telling line of a ``load_state_dict`` error: the first after its header."""
    lines = str(err).strip().splitlines()
    detail = lines[1].strip() if len(lines) > 1 else lines[0] if lines else ""
    return detail[:200]


def read_init_weights(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], str]:
    """The plain model's weights that ``model.init_from`` names, and a line describing them.

    ``path`` is a run checkpoint of a variant ``"se"`` run (the file or its run directory) or a
    file holding a plain model's ``state_dict`` (``torch.save(model.state_dict(), path)``).

    Raises:
        CheckpointError: nothing there, an unreadable file, a converted (se_a/se_r) run or a
            :func:`condattn.save` file (their weights are not a plain model's), or neither kind.
    """
    p = checkpoint_file(path)
    if not p.is_file():
        raise CheckpointError(
            f"model.init_from: no file at {p}; give a plain (variant 'se') run's checkpoint.pt "
            "or run directory, or a file of torch.save(model.state_dict())"
        )
    payload = read_torch_file(p)
    kind = file_kind(payload)
    if kind == "run":
        state = _check_run_checkpoint(p, payload)
        variant = state["config"].get("model", {}).get("variant")
        if variant != "se":
            raise CheckpointError(
                f"model.init_from: {p} is a variant {variant!r} run; fine-tuning starts from a "
                "plain model's weights: a variant 'se' run"
            )
        return state["model"], f"{p} (run {state['config'].get('name')!r}, epoch {state['epoch']})"
    if kind == "saved":
        raise CheckpointError(
            f"model.init_from: {p} is a condattn.save file of a converted model; give the "
            "plain model's weights (a variant 'se' run or its state_dict)"
        )
    if kind == "state_dict":
        return payload, str(p)
    raise CheckpointError(
        f"model.init_from: {p} is neither a condattn run checkpoint nor a state_dict "
        "(a dict of tensors)"
    )


def apply_init_weights(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, variant: str, source: str
) -> None:
    """Loads a plain model's ``state_dict`` into a run's freshly built ``model``: directly for
    variant ``"se"``, with :func:`condattn.load_base_state_dict` for se_a/se_r (the heads and
    T columns keep their init).

    Raises:
        CheckpointError: the weights do not fit (the first differing key or shape).
    """
    try:
        if variant == "se":
            model.load_state_dict(state_dict)
        else:
            load_base_state_dict(model, state_dict)
    except RuntimeError as err:
        raise CheckpointError(
            f"model.init_from: {source} does not fit this run's model.arch: {_misfit(err)}"
        ) from None


def model_from_checkpoint(
    state: Mapping[str, Any], *, num_classes: int, source: str = "the checkpoint"
) -> nn.Module:
    """The run's model, rebuilt from ``state["config"]`` with ``state["model"]``, in eval mode.

    Args:
        state: what :func:`load_checkpoint` returned.
        num_classes: the classifier's width (the data's number of classes).
        source: the file's name, for error messages.

    Raises:
        CheckpointError: the weights do not fit the model the config builds.
    """
    model = build_model(config_from_dict(state["config"]), num_classes=num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{source}: its weights do not fit the model its config builds "
            f"({num_classes} classes): {_misfit(err)}"
        ) from None
    return model.eval()


@dataclass(frozen=True)
class LoadedModel:
    """A model rebuilt from a file by :func:`load_model`, in eval mode on the CPU."""

    model: nn.Module
    # "SE-R (run name)" for a run checkpoint; the file name's stem for a condattn.save file.
    label: str
    # The run's resolved config and last finished epoch; None for a condattn.save file.
    config: TrainConfig | None = None
    epoch: int | None = None


def load_model(
    path: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    arch: str | None = None,
    widths: Sequence[int] | None = None,
) -> LoadedModel:
    """Rebuilds a model from a run checkpoint (or its run directory) or a condattn.save file.

    Args:
        path: ``checkpoint.pt``, the run directory holding it, or a file written by
            :func:`condattn.save`.
        num_classes: the classifier's width; default: read from the weights (``fc.weight``) or,
            for a condattn.save file, from its conversion config.
        arch: the registered base model of a condattn.save file (e.g. ``"se_resnet50"``);
            not needed for a run checkpoint, whose config names it.
        widths: the stage widths of ``arch`` (default: the paper's).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file is neither kind, or a condattn.save file comes without ``arch``.
    """
    file = checkpoint_file(path)
    payload = read_torch_file(file)
    kind = file_kind(payload)
    if kind == "run":
        payload = _check_run_checkpoint(file, payload)
        n = num_classes or _num_classes(payload["model"])
        model = model_from_checkpoint(payload, num_classes=n, source=str(file))
        cfg = config_from_dict(payload["config"])
        label = VARIANT_LABELS[cfg.model.variant]
        return LoadedModel(model, f"{label} ({cfg.name})", cfg, payload.get("epoch"))
    if kind == "saved":
        if arch is None:
            raise CheckpointError(
                f"{file} was written by condattn.save: give its base model (--arch)"
            )
        n = num_classes or _saved_num_classes(payload["config"])
        base = create_model(arch, num_classes=n, **({"widths": tuple(widths)} if widths else {}))
        return LoadedModel(load_converted(file, base).eval(), file.stem)
    raise CheckpointError(f"{file}: neither a run checkpoint nor a condattn.save file")


def _num_classes(state_dict: Mapping[str, Tensor]) -> int:
    if "fc.weight" in state_dict:
        return int(state_dict["fc.weight"].shape[0])
    raise ValueError("cannot infer num_classes from the weights (no fc.weight); pass num_classes")


def _saved_num_classes(config_json: str) -> int:
    return int(json.loads(config_json)["num_classes"])
