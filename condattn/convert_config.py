"""The record a conversion leaves on its model: :class:`ConvertConfig` and how each twin was built.

Part of the transform layer (docs/design.md, 2.2). :func:`condattn.convert` writes both records
in its last step; :func:`get_config`, :mod:`condattn.serialization` and
:func:`condattn.logits_only` read them back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import fx, nn

from condattn.mappings import Builder

__all__ = ["ConvertConfig", "get_config", "swaps_of"]


@dataclass(frozen=True)
class ConvertConfig:
    """Everything needed to rebuild a conversion from its base model (saved as JSON)."""

    aux_at: tuple[str, ...]
    num_classes: int
    feeds: dict[str, tuple[str, ...]]  # head name -> attention names it conditions
    conditioned: bool = True
    cond: str = "logits"
    detach_cond: bool = False
    aux_dropout: float = 0.7
    init: str = "zeros"
    aux_model: bool = False
    aux_head: dict[str, int] = field(default_factory=dict)  # pool_size / width / hidden
    leaf_modules: tuple[str, ...] = ()
    example_shape: tuple[int, ...] = ()
    # how aux_at was chosen: "given" by the caller, or the reason of aux_at="auto"'s rule
    placement: str = "given"
    # conditioned attention name -> its route: "graph" (T is an argument of its call in the
    # graph) or "in-place" (inside a leaf module; T delivered at run time, condattn._inplace)
    routes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConvertConfig:
        d = json.loads(text)
        d["aux_at"] = tuple(d["aux_at"])
        d["feeds"] = {k: tuple(v) for k, v in d["feeds"].items()}
        d["leaf_modules"] = tuple(d["leaf_modules"])
        d["example_shape"] = tuple(d["example_shape"])
        return cls(**d)


CONFIG = "condattn_config"  # gm.meta key of the ConvertConfig
SWAPS = "condattn_swaps"  # gm.meta key of the Swaps (how each twin was built)


def record(gm: fx.GraphModule, key: str, value: Any) -> None:
    """Keep ``value`` in ``gm.meta[key]`` and, because fx does not pickle ``meta`` (it rebuilds
    the GraphModule from its code), also as a plain attribute that ``torch.load`` restores."""
    gm.meta[key] = value
    gm.__dict__["_" + key] = value


def recorded(model: nn.Module, key: str) -> Any:
    if not isinstance(model, fx.GraphModule):
        return None
    value = model.meta.get(key)
    if value is None:
        value = model.__dict__.get("_" + key)
        if value is not None:  # unpickled by torch.load: put it back where it belongs
            model.meta[key] = value
    return value


def get_config(model: nn.Module) -> ConvertConfig:
    """The :class:`ConvertConfig` of a converted model."""
    cfg = recorded(model, CONFIG)
    if cfg is None:
        raise ValueError("this model was not made by condattn.convert")
    return cfg


@dataclass(frozen=True)
class Swap:
    """How one twin was built, so that its source's weights can be mapped onto it later
    (:func:`condattn.load_base_state_dict`)."""

    source: nn.Module  # a copy of the source module on the meta device (no memory)
    build: Builder
    channels: int
    cond_dim: int


def swaps_of(model: nn.Module) -> dict[str, Swap]:
    """Module path -> :class:`Swap` of every twin that :func:`convert` put in ``model``."""
    get_config(model)
    return dict(recorded(model, SWAPS) or {})
