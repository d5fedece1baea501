"""Atomic, resumable checkpoints: state dicts + RNG states + the resolved config (no pickled
modules, so a checkpoint loads into a freshly built model of the same config).

:func:`model_from_checkpoint` is the one way back from a run checkpoint to a model
(``condattn eval`` uses it); :func:`load_model` wraps it for ``condattn analyze``, which also
reads :func:`condattn.save` files.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from condattn._io import atomic_torch_save
from condattn.models import create_model
from condattn.serialization import load as load_converted
from condattn.train.build import build_model
from condattn.train.config import TrainConfig
from condattn.train.recipe import config_from_dict

__all__ = [
    "CHECKPOINT_NAME",
    "LoadedModel",
    "load_checkpoint",
    "load_model",
    "model_from_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        ValueError: the file is not a condattn checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # weights_only=False: the RNG state holds numpy arrays and Python tuples. Only load
    # checkpoints you wrote yourself.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise ValueError(f"{path} is not a condattn checkpoint (no format_version/model)")
    return state


def model_from_checkpoint(state: Mapping[str, Any], *, num_classes: int) -> nn.Module:
    """The run's model, rebuilt from ``state["config"]`` with ``state["model"]``, in eval mode.

    Args:
        state: what :func:`load_checkpoint` returned.
        num_classes: the classifier's width (the data's number of classes).
    """
    model = build_model(config_from_dict(state["config"]), num_classes=num_classes)
    model.load_state_dict(state["model"])
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
    path = Path(path)
    file = path / CHECKPOINT_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file}")
    # weights_only=False: a run checkpoint holds RNG states (numpy arrays, Python tuples).
    payload = torch.load(file, map_location="cpu", weights_only=False)
    if isinstance(payload, dict) and {"format_version", "config", "model"} <= payload.keys():
        n = num_classes or _num_classes(payload["model"])
        model = model_from_checkpoint(payload, num_classes=n)
        cfg = config_from_dict(payload["config"])
        label = {"se": "SE", "se_a": "SE-A", "se_r": "SE-R"}[cfg.model.variant]
        return LoadedModel(model, f"{label} ({cfg.name})", cfg, payload.get("epoch"))
    if isinstance(payload, dict) and {"config", "state_dict"} <= payload.keys():
        if arch is None:
            raise ValueError(f"{file} was written by condattn.save: give its base model (--arch)")
        n = num_classes or _saved_num_classes(payload["config"])
        base = create_model(arch, num_classes=n, **({"widths": tuple(widths)} if widths else {}))
        return LoadedModel(load_converted(file, base).eval(), file.stem)
    raise ValueError(f"{file} is neither a run checkpoint nor a condattn.save file")


def _num_classes(state_dict: Mapping[str, Tensor]) -> int:
    if "fc.weight" in state_dict:
        return int(state_dict["fc.weight"].shape[0])
    raise ValueError("cannot infer num_classes from the weights (no fc.weight); pass num_classes")


def _saved_num_classes(config_json: str) -> int:
    return int(json.loads(config_json)["num_classes"])
