"""Checkpoints of converted models: the state_dict plus the conversion config as JSON.

No GraphModule is pickled (design.md): :func:`load` re-converts a base model with the saved
config and loads the weights into it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from condattn._io import atomic_torch_save
from condattn.convert import ConvertConfig, convert, get_config

__all__ = ["load", "save"]

_FORMAT = "condattn.checkpoint.v1"


def save(
    model: nn.Module, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save a converted model as its state_dict plus its conversion config (JSON), atomically.

    No GraphModule is pickled: :func:`load` rebuilds the model from its base model.

    Args:
        model: a model returned by :func:`condattn.convert`.
        path: the file to write (its folder is created).
        extra: JSON-serialisable facts to keep beside the weights (e.g. an epoch).
    """
    payload = {
        "format": _FORMAT,
        "config": get_config(model).to_json(),
        "state_dict": model.state_dict(),
        "extra": json.dumps(dict(extra or {})),
    }
    return atomic_torch_save(payload, path)


def _read(path: str | os.PathLike, map_location) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch.load raises many types for a foreign file
        raise ValueError(
            f"{path} is not a condattn checkpoint (written by condattn.save): {e}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a condattn checkpoint (written by condattn.save)")
    return payload


def load(
    path: str | os.PathLike,
    base_model: nn.Module,
    *,
    aux_model: nn.Module | None = None,
    map_location: str | torch.device | None = "cpu",
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Rebuild a model saved with :func:`save`: re-convert ``base_model``, then load the weights.

    Args:
        path: the file written by :func:`save`.
        base_model: a model of the same architecture as the one converted (its weights are
            replaced).
        aux_model: the auxiliary model's architecture, if the conversion had one.
        map_location: as ``torch.load``'s.
        leaf_modules: leaf module *types* given to :func:`convert` (names are saved in the file).
        concrete_args: the ``concrete_args`` given to :func:`convert` (they are not saved).
    """
    payload = _read(path, map_location)
    cfg = ConvertConfig.from_json(payload["config"])
    if cfg.aux_model and aux_model is None:
        raise ValueError(
            f"{path} was converted with an aux_model: pass aux_model= (its architecture)"
        )
    model = convert(
        base_model,
        cfg.aux_at,
        num_classes=cfg.num_classes,
        feeds={h: list(v) for h, v in cfg.feeds.items()} if cfg.conditioned else None,
        conditioned=cfg.conditioned,
        cond=cfg.cond,
        detach_cond=cfg.detach_cond,
        aux_dropout=cfg.aux_dropout,
        init=cfg.init,
        aux_model=aux_model,
        aux_head=cfg.aux_head,
        example_input=torch.zeros(cfg.example_shape) if cfg.example_shape else None,
        leaf_modules=(*cfg.leaf_modules, *leaf_modules),
        concrete_args=concrete_args,
    )
    model.load_state_dict(payload["state_dict"], strict=True)
    return model
