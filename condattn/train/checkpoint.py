"""Atomic, resumable checkpoints: state dicts + RNG states + the resolved config (no pickled
modules, so a checkpoint loads into a freshly built model of the same config)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from condattn._io import atomic_torch_save

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

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
