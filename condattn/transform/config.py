"""``ConvertConfig``: the one definition of :func:`condattn.convert`'s options, and its record.

Part of the transform layer (docs/design.md, 2.2 and 6). A conversion option is a field here
(with its default, its why-comment and its check in :meth:`ConvertConfig.__post_init__`) plus its
use in the pass: ``convert(model, config, **overrides)`` builds one and validates it once, the
converted model records the resolved config (:func:`get_config`), :func:`condattn.save` writes it
as JSON and :func:`condattn.load` converts again from it. The recipe's ``[model]`` table maps onto
it by name. Objects that are not options (the auxiliary model, an example input, ``concrete_args``
and the swap table) are keyword arguments of :func:`condattn.convert` and are not recorded.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import fx, nn

from condattn.nn._common import INITS
from condattn.transform.conds import COND_MODES, CONDS
from condattn.transform.mappings import Builder
from condattn.transform.placement import AUTO

__all__ = [
    "AUX_HEAD_KEYS",
    "CONDS",
    "COND_MODES",
    "ConvertConfig",
    "get_config",
    "options",
    "swaps_of",
]

AUX_HEAD_DEFAULTS = {"pool_size": 4, "width": 128, "hidden": 1024}  # GoogLeNet's InceptionAux
AUX_HEAD_KEYS = tuple(AUX_HEAD_DEFAULTS)
_RECORD = {"record": True}  # fields that convert fills in; as input they are ignored


@dataclass(frozen=True)
class ConvertConfig:
    """The options of one conversion; on a converted model, what the conversion resolved.

    Every field is an option of :func:`condattn.convert` with the same name, except those marked
    *record*, which the pass fills in (an input value is ignored).
    """

    # "auto" (the paper's placement, read from the graph's strides) or module names in network
    # order after whose output a head goes; recorded as the names chosen
    aux_at: tuple[str, ...] | str = AUTO
    # n, the length of T: inferred from the logits when None (recorded as inferred)
    num_classes: int | None = None
    # head name -> attention names or prefixes it conditions; None = the paper's routing (each
    # attention fed by the nearest head before it); recorded as resolved
    feeds: Mapping[str, tuple[str, ...]] | None = None
    # False is SE-A: heads and their loss, attention untouched (the paper's ablation)
    conditioned: bool = True
    # what T is (condattn.transform.conds): "logits" (our reading: the paper does not say whether
    # T is normalised), "probs", or the controls "features" (the head's penultimate activations)
    # and "shuffled" (another image's logits)
    cond: str = "logits"
    # how T enters: "concat" into W1 (Eq. 4), or "film" of the gate's pre-activation (ours)
    cond_mode: str = "concat"
    # k: a learned projection of T to k values per head before the blocks (many classes);
    # None feeds T whole, as the paper does
    cond_rank: int | None = None
    # stop the attention's gradient from reaching the heads through T (the paper does not)
    detach_cond: bool = False
    # dropout of the aux heads: GoogLeNet's (and the paper's) 0.7 (Table 5)
    aux_dropout: float = 0.7
    # T-column init of the twins: "zeros" keeps the source's function exactly (safe for trained
    # models); "default" is PyTorch's init, as when training from scratch (the paper's recipes)
    init: str = "zeros"
    # pool_size / width / hidden of the aux heads; missing keys take GoogLeNet's 4 / 128 / 1024
    aux_head: Mapping[str, int] = field(default_factory=dict)
    # module names or types fx must not trace into; attention inside is conditioned in place.
    # Only names are recorded (types are given again to condattn.load)
    leaf_modules: tuple[str | type[nn.Module], ...] = ()
    # --- the record ---
    aux_model: bool = field(default=False, metadata=_RECORD)  # a section 5.6 aux model was given
    example_shape: tuple[int, ...] = field(default=(), metadata=_RECORD)  # the traced input
    # how aux_at was chosen: "given", or the reason of aux_at="auto"'s rule
    placement: str = field(default="given", metadata=_RECORD)
    # conditioned attention name -> route: "graph" (T is an argument of its call) or "in-place"
    # (inside a leaf module; T delivered at run time, condattn.transform.inplace)
    routes: Mapping[str, str] = field(default_factory=dict, metadata=_RECORD)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "aux_at", _aux_at(self.aux_at))
        if self.cond not in CONDS:
            raise ValueError(f"cond must be one of {CONDS}, got {self.cond!r}")
        if self.cond_mode not in COND_MODES:
            raise ValueError(f"cond_mode must be one of {COND_MODES}, got {self.cond_mode!r}")
        k = self.cond_rank
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
            raise ValueError(f"cond_rank must be a positive int or None, got {k!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not 0.0 <= self.aux_dropout < 1.0:
            raise ValueError(f"aux_dropout must be in [0, 1), got {self.aux_dropout}")
        n = self.num_classes
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise ValueError(f"num_classes must be a positive int, got {n!r}")
        unknown_keys = set(self.aux_head or {}) - set(AUX_HEAD_KEYS)
        if unknown_keys:
            raise ValueError(
                f"aux_head takes {', '.join(AUX_HEAD_KEYS)}; got {sorted(self.aux_head)}"
            )
        set_(self, "aux_head", {**AUX_HEAD_DEFAULTS, **(self.aux_head or {})})
        if self.feeds is not None:
            if not isinstance(self.feeds, Mapping):
                raise TypeError(
                    f"feeds must be a dict of head -> attention names, got {self.feeds!r}"
                )
            set_(self, "feeds", {h: _names(v) for h, v in self.feeds.items()})
        leaves = self.leaf_modules
        set_(self, "leaf_modules", (leaves,) if isinstance(leaves, str) else tuple(leaves))
        set_(self, "example_shape", tuple(self.example_shape))
        set_(self, "routes", dict(self.routes))

    def to_json(self) -> str:
        d = asdict(self)
        d["leaf_modules"] = [x for x in self.leaf_modules if isinstance(x, str)]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConvertConfig:
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def options(self) -> dict[str, Any]:
        """The fields a caller chooses (not the record), by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata}


def _aux_at(aux_at: Any) -> tuple[str, ...] | str:
    if aux_at == AUTO:
        return AUTO
    aux_at = (aux_at,) if isinstance(aux_at, str) else tuple(aux_at)
    if not all(isinstance(a, str) for a in aux_at):
        raise TypeError(f"aux_at must be a list of module names, got {aux_at!r}")
    if len(set(aux_at)) != len(aux_at):
        raise ValueError(f"aux_at has duplicates: {aux_at}")
    return aux_at


def _names(v: str | Sequence[str]) -> tuple[str, ...]:
    return (v,) if isinstance(v, str) else tuple(v)


def options(config: Any = None, overrides: Mapping[str, Any] | None = None) -> ConvertConfig:
    """``convert``'s first argument and keyword options -> one validated :class:`ConvertConfig`.

    ``config`` is a :class:`ConvertConfig`, None, or (shorthand) the ``aux_at`` value.
    """
    overrides = dict(overrides or {})
    known = [f.name for f in fields(ConvertConfig) if not f.metadata]
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            did = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"convert() got an unknown option {key!r}.{did} Options: {', '.join(known)}; "
                "and the objects aux_model, example_input, concrete_args, mapping."
            )
    if config is None:
        return ConvertConfig(**overrides)
    if isinstance(config, ConvertConfig):
        return ConvertConfig(**{**config.options(), **overrides}) if overrides else config
    if "aux_at" in overrides:
        raise TypeError("aux_at given twice: as the second argument and as aux_at=")
    return ConvertConfig(aux_at=config, **overrides)


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
