"""The swap table: plain attention type -> its conditioned twin (a class, or a builder of one).

Like torch.ao's quantization mappings: a plain dict, a getter that returns a copy, and one
extension point, :func:`register_attention`, that refuses duplicates. The table is the single
record of the twin types: :func:`cond_types` reads them from it.

A value is either a ``Cond*`` class with ``from_module`` or a builder function marked with
:func:`builds`. Either way it is called as ``builder(src, *, channels=C, cond_dim=n, init=...)``,
where C is the channel count of the attention's input tensor as traced, and returns a module whose
``forward(x, cond)`` returns what its source returns for ``x``: a tensor shaped like ``x`` for an
attention block; the block's own output for the conv blocks that contain their attention (timm's
``SelectiveKernel`` and ``SplitAttn``, whose twins replace the whole block).

Covered: condattn's own blocks; ``torchvision.ops.SqueezeExcitation`` (EfficientNet, MobileNetV3,
RegNet); and, when timm is installed, timm's ``SEModule``, ``EffectiveSEModule``, ``EcaModule``,
``CbamModule``, ``CoordAttn``, the EfficientNet-family ``SqueezeExcite``, ``CecaModule``,
``GatherExcite``, ``GlobalContext``, ``LightCbamModule``, ``SelectiveKernel`` and ``SplitAttn``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from condattn.nn import (
    Cbam,
    CondCbam,
    CondCoordAttn,
    CondEca,
    CondEffectiveSE,
    CondFilm,
    CondLinear,
    CondSqueezeExcite,
    CoordAttn,
    Eca,
    SqueezeExcite,
)

__all__ = [
    "Builder",
    "as_builder",
    "builds",
    "cond_types",
    "get_attention_mapping",
    "register_attention",
    "swappable_types",
    "unregister_attention",
]

Builder = Callable[..., nn.Module]
_F = TypeVar("_F", bound=Callable[..., nn.Module])
_BUILDER_ARGS = ("channels", "cond_dim", "init")


def builds(cond_type: type[nn.Module]) -> Callable[[_F], _F]:
    """Mark a builder function with the twin type it returns (read by :func:`cond_types`)."""

    def mark(fn: _F) -> _F:
        fn.cond_type = cond_type  # type: ignore[attr-defined]
        return fn

    return mark


def as_builder(value: Any) -> Builder:
    """The callable behind a table value: a class's ``from_module``, or the function itself."""
    if isinstance(value, type) and hasattr(value, "from_module"):
        return value.from_module
    if callable(value) and not isinstance(value, type):
        return value
    raise TypeError(f"cond_type must be a class with from_module or a callable, got {value!r}")


def _twin_type(value: Any) -> type[nn.Module] | None:
    if isinstance(value, type):
        return value
    owner = getattr(value, "__self__", None)  # a bound classmethod such as Cond.from_module
    return getattr(value, "cond_type", owner if isinstance(owner, type) else None)


def cond_types(mapping: Mapping[type[nn.Module], Any] | None = None) -> tuple[type[nn.Module], ...]:
    """The twin types of a swap table (default: :func:`get_attention_mapping`), plus
    :class:`~condattn.nn.CondLinear`, the twin of an inline SE's W1 that needs no table entry,
    and :class:`~condattn.nn.CondFilm`, the twin of every type under ``cond_mode="film"``.

    A builder function's twin is known when it is marked with :func:`builds`.
    """
    table = get_attention_mapping() if mapping is None else mapping
    found = {t for t in map(_twin_type, table.values()) if t is not None}
    extra = (CondLinear, CondFilm)
    return (*extra, *sorted(found - set(extra), key=lambda t: t.__qualname__))


def _check_builder(value: Any) -> Builder:
    """``as_builder`` plus a check that the builder takes ``channels``, ``cond_dim``, ``init``."""
    builder = as_builder(value)
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return builder
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return builder
    missing = [a for a in _BUILDER_ARGS if a not in params]
    if missing:
        raise TypeError(
            f"{getattr(builder, '__qualname__', builder)} must accept the keyword arguments "
            f"{', '.join(_BUILDER_ARGS)} (builder(src, *, channels=C, cond_dim=n, init=...)); "
            f"it lacks {', '.join(missing)}"
        )
    return builder


def _agree(src: nn.Module, channels: int, known: int) -> int:
    """C as traced must match the C that the source's first layer reads."""
    if channels != known:
        raise ValueError(
            f"{type(src).__name__}: the traced input has {channels} channels, its layers read "
            f"{known}"
        )
    return channels


# --- torchvision ---------------------------------------------------------------------------


@builds(CondSqueezeExcite)
def _from_torchvision_se(src: nn.Module, *, channels: int, cond_dim: int, init: str) -> nn.Module:
    """torchvision.ops.SqueezeExcitation: pool, 1x1 convs fc1/fc2, activation, scale_activation."""
    return CondSqueezeExcite.from_parts(
        channels=_agree(src, channels, src.fc1.in_channels),
        cond_dim=cond_dim,
        fc1=src.fc1,
        fc2=src.fc2,
        act=src.activation,
        gate=src.scale_activation,
        init=init,
    )


# --- timm ----------------------------------------------------------------------------------


@builds(CondSqueezeExcite)
def _from_timm_se(src: nn.Module, *, channels: int, cond_dim: int, init: str) -> nn.Module:
    """timm SEModule: mean (+ max), fc1, bn, act, fc2, gate (all 1x1 convs)."""
    return CondSqueezeExcite.from_parts(
        channels=_agree(src, channels, src.fc1.in_channels),
        cond_dim=cond_dim,
        fc1=src.fc1,
        fc2=src.fc2,
        act=src.act,
        gate=src.gate,
        init=init,
        add_maxpool=bool(getattr(src, "add_maxpool", False)),
        norm=None if isinstance(src.bn, nn.Identity) else src.bn,
    )


@builds(CondEffectiveSE)
def _from_timm_effective_se(
    src: nn.Module, *, channels: int, cond_dim: int, init: str
) -> nn.Module:
    """timm EffectiveSEModule: mean (+ max), one C x C 1x1 conv ``fc``, gate."""
    _agree(src, channels, src.fc.in_channels)
    return CondEffectiveSE.from_parts(
        fc=src.fc,
        gate=src.gate,
        cond_dim=cond_dim,
        add_maxpool=bool(getattr(src, "add_maxpool", False)),
        init=init,
    )


@builds(CondSqueezeExcite)
def _from_timm_efficientnet_se(
    src: nn.Module, *, channels: int, cond_dim: int, init: str
) -> nn.Module:
    """timm's EfficientNet-family SqueezeExcite: conv_reduce, act1, conv_expand, gate."""
    return CondSqueezeExcite.from_parts(
        channels=_agree(src, channels, src.conv_reduce.in_channels),
        cond_dim=cond_dim,
        fc1=src.conv_reduce,
        fc2=src.conv_expand,
        act=src.act1,
        gate=src.gate,
        init=init,
    )


@builds(CondEca)
def _from_timm_eca(src: nn.Module, *, channels: int, cond_dim: int, init: str) -> nn.Module:
    """timm EcaModule: mean, 1-D conv across channels, gate. It does not record C: the
    ``channels`` argument (from the traced graph) is the only source of it."""
    if getattr(src, "conv2", None) is not None:
        raise TypeError("timm EcaModule(use_mlp=True) is not supported; register your own twin")
    return CondEca.from_parts(
        channels=channels, cond_dim=cond_dim, conv=src.conv, gate=src.gate, init=init
    )


@builds(CondCbam)
def _from_timm_cbam(src: nn.Module, *, channels: int, cond_dim: int, init: str) -> nn.Module:
    """timm CbamModule: channel MLP fc1/act/fc2 (1x1 convs, no bias), spatial conv and gate."""
    ch, sp = src.channel, src.spatial
    return CondCbam.from_parts(
        channels=_agree(src, channels, ch.fc1.in_channels),
        cond_dim=cond_dim,
        fc1=ch.fc1,
        fc2=ch.fc2,
        act=ch.act,
        channel_gate=ch.gate,
        spatial_conv=sp.conv,
        spatial_norm=nn.Identity(),
        spatial_gate=sp.gate,
        init=init,
    )


@builds(CondCoordAttn)
def _from_timm_coord(src: nn.Module, *, channels: int, cond_dim: int, init: str) -> nn.Module:
    """timm CoordAttn: shared conv1/bn1/act, conv_h/conv_w, gate (has_skip=False only)."""
    if getattr(src, "has_skip", False):
        raise TypeError("timm CoordAttn(has_skip=True) is not supported; register your own twin")
    return CondCoordAttn.from_parts(
        channels=_agree(src, channels, src.conv1.in_channels),
        cond_dim=cond_dim,
        conv1=src.conv1,
        bn1=src.bn1,
        act=src.act,
        conv_h=src.conv_h,
        conv_w=src.conv_w,
        gate=src.gate,
        init=init,
    )


def _default_mapping() -> dict[type[nn.Module], Any]:
    table: dict[type[nn.Module], Any] = {
        SqueezeExcite: CondSqueezeExcite,
        Cbam: CondCbam,
        CoordAttn: CondCoordAttn,
        Eca: CondEca,
    }
    from torchvision.ops import SqueezeExcitation

    table[SqueezeExcitation] = _from_torchvision_se
    try:  # timm is optional; its entries: source type -> a builder marked with @builds(twin)
        from timm.layers.cbam import CbamModule, LightCbamModule
        from timm.layers.coord_attn import CoordAttn as TimmCoordAttn
        from timm.layers.eca import CecaModule, EcaModule
        from timm.layers.gather_excite import GatherExcite
        from timm.layers.global_context import GlobalContext
        from timm.layers.selective_kernel import SelectiveKernel
        from timm.layers.split_attn import SplitAttn
        from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
        from timm.models._efficientnet_blocks import SqueezeExcite as TimmEffNetSE
    except ImportError:
        return table
    from condattn.nn import (
        CondCeca,
        CondGatherExcite,
        CondGlobalContext,
        CondLightCbam,
        CondSelectiveKernel,
        CondSplitAttn,
    )

    table.update(
        {
            SEModule: _from_timm_se,
            EffectiveSEModule: _from_timm_effective_se,
            EcaModule: _from_timm_eca,
            CbamModule: _from_timm_cbam,
            TimmCoordAttn: _from_timm_coord,
            TimmEffNetSE: _from_timm_efficientnet_se,
            # These twins check their timm source themselves (Cond*.from_module).
            CecaModule: CondCeca,
            GatherExcite: CondGatherExcite,
            GlobalContext: CondGlobalContext,
            LightCbamModule: CondLightCbam,
            # Conv blocks that contain their attention: the twin replaces the whole block and
            # returns what it returns (out_channels, stride), not a tensor like its input.
            SelectiveKernel: CondSelectiveKernel,
            SplitAttn: CondSplitAttn,
        }
    )
    return table


_MAPPING: dict[type[nn.Module], Any] | None = None
_USER: dict[type[nn.Module], Any] = {}


def _table() -> dict[type[nn.Module], Any]:
    global _MAPPING
    if _MAPPING is None:  # filled lazily: no import-time work
        _MAPPING = _default_mapping()
    return _MAPPING


def get_attention_mapping() -> dict[type[nn.Module], Any]:
    """A copy of the swap table (built-in entries plus registered ones): source type -> a
    ``Cond*`` class or a builder; :func:`as_builder` gives the callable of either."""
    return {**_table(), **_USER}


def swappable_types() -> tuple[type[nn.Module], ...]:
    return tuple(get_attention_mapping())


def register_attention(src_type: type[nn.Module], cond_type) -> None:
    """Teach :func:`condattn.convert` a new attention type.

    Args:
        src_type: the plain attention module class.
        cond_type: its twin: a class with ``from_module(src, *, channels, cond_dim, init)`` or a
            callable with that signature (mark it with :func:`builds` so that
            :func:`cond_types` knows what it returns). :func:`condattn.convert` calls it as
            ``builder(src, channels=C, cond_dim=n, init=init)``: C is the channel count of the
            attention's input as traced, n the length of T, ``init`` ``"zeros"`` or
            ``"default"`` for the T-columns. The twin's ``forward(x, cond)`` must return what
            the source returns for ``x``: a tensor shaped like ``x`` for an attention block (a
            twin that replaces a whole conv block, as ``CondSplitAttn`` does, returns the
            block's output).

    Raises:
        ValueError: if ``src_type`` is already registered.
        TypeError: if ``cond_type`` is neither, or its builder lacks one of those arguments.
    """
    if not (isinstance(src_type, type) and issubclass(src_type, nn.Module)):
        raise TypeError(f"src_type must be an nn.Module subclass, got {src_type!r}")
    if src_type in get_attention_mapping():
        raise ValueError(
            f"{src_type.__name__} is already registered (-> {get_attention_mapping()[src_type]}); "
            "call unregister_attention first to replace it"
        )
    _check_builder(cond_type)
    _USER[src_type] = cond_type


def unregister_attention(src_type: type[nn.Module]) -> None:
    """Remove a type added by :func:`register_attention` (built-in entries cannot be removed)."""
    if src_type not in _USER:
        raise KeyError(
            f"{getattr(src_type, '__name__', src_type)} was not added by register_attention"
        )
    del _USER[src_type]
