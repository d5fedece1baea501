"""The swap table: plain attention type -> a builder of its conditioned twin.

Like torch.ao's quantization mappings: a plain dict, a getter that returns a copy, and one
extension point, :func:`register_attention`, that refuses duplicates. A builder is called as
``builder(src, cond_dim=n, init="zeros")`` and returns a module whose ``forward(x, cond)`` returns a
tensor shaped like ``x``; a ``Cond*`` class with ``from_module`` is such a builder.

Covered: condattn's own blocks; ``torchvision.ops.SqueezeExcitation`` (EfficientNet, MobileNetV3,
RegNet); and, when timm is installed, timm's ``SEModule``, ``EffectiveSEModule``, ``EcaModule``,
``CbamModule``, ``CoordAttn`` and the EfficientNet-family ``SqueezeExcite``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from condattn.nn import (
    Cbam,
    CondCbam,
    CondCoordAttn,
    CondEca,
    CondEffectiveSE,
    CondLinear,
    CondSqueezeExcite,
    CoordAttn,
    Eca,
    SqueezeExcite,
)

__all__ = [
    "COND_TYPES",
    "Builder",
    "get_attention_mapping",
    "register_attention",
    "swappable_types",
]

Builder = Callable[..., nn.Module]

COND_TYPES: tuple[type[nn.Module], ...] = (
    CondSqueezeExcite,
    CondCbam,
    CondCoordAttn,
    CondEca,
    CondEffectiveSE,
    CondLinear,
)


def _as_builder(cond_type) -> Builder:
    if isinstance(cond_type, type) and hasattr(cond_type, "from_module"):
        return cond_type.from_module
    if callable(cond_type):
        return cond_type
    raise TypeError(f"cond_type must be a class with from_module or a callable, got {cond_type!r}")


# --- torchvision ---------------------------------------------------------------------------


def _from_torchvision_se(src: nn.Module, *, cond_dim: int, init: str = "zeros") -> nn.Module:
    """torchvision.ops.SqueezeExcitation: pool, 1x1 convs fc1/fc2, activation, scale_activation."""
    return CondSqueezeExcite.from_parts(
        channels=src.fc1.in_channels,
        cond_dim=cond_dim,
        fc1=src.fc1,
        fc2=src.fc2,
        act=src.activation,
        gate=src.scale_activation,
        init=init,
    )


# --- timm ----------------------------------------------------------------------------------


def _from_timm_se(src: nn.Module, *, cond_dim: int, init: str = "zeros") -> nn.Module:
    """timm SEModule: mean (+ max), fc1, bn, act, fc2, gate (all 1x1 convs)."""
    return CondSqueezeExcite.from_parts(
        channels=src.fc1.in_channels,
        cond_dim=cond_dim,
        fc1=src.fc1,
        fc2=src.fc2,
        act=src.act,
        gate=src.gate,
        init=init,
        add_maxpool=bool(getattr(src, "add_maxpool", False)),
        norm=None if isinstance(src.bn, nn.Identity) else src.bn,
    )


def _from_timm_effective_se(src: nn.Module, *, cond_dim: int, init: str = "zeros") -> nn.Module:
    return CondEffectiveSE.from_parts(
        fc=src.fc,
        gate=src.gate,
        cond_dim=cond_dim,
        add_maxpool=bool(getattr(src, "add_maxpool", False)),
        init=init,
    )


def _from_timm_efficientnet_se(src: nn.Module, *, cond_dim: int, init: str = "zeros") -> nn.Module:
    """timm's EfficientNet-family SqueezeExcite: conv_reduce, act1, conv_expand, gate."""
    return CondSqueezeExcite.from_parts(
        channels=src.conv_reduce.in_channels,
        cond_dim=cond_dim,
        fc1=src.conv_reduce,
        fc2=src.conv_expand,
        act=src.act1,
        gate=src.gate,
        init=init,
    )


def _from_timm_eca(src: nn.Module, *, cond_dim: int, init: str = "zeros") -> nn.Module:
    if getattr(src, "conv2", None) is not None:
        raise TypeError("timm EcaModule(use_mlp=True) is not supported; register your own twin")
    # timm's EcaModule does not keep C; convert() records it from the traced shapes.
    channels = getattr(src, "channels", None) or getattr(src, "_condattn_channels", None)
    if channels is None:
        raise TypeError(
            "timm EcaModule does not record its channel count; convert() sets it from the graph"
        )
    return CondEca.from_parts(
        channels=channels, cond_dim=cond_dim, conv=src.conv, gate=src.gate, init=init
    )


def _from_timm_cbam(src: nn.Module, *, cond_dim: int, init: str = "zeros") -> nn.Module:
    ch, sp = src.channel, src.spatial
    return CondCbam.from_parts(
        channels=ch.fc1.in_channels,
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


def _from_timm_coord(src: nn.Module, *, cond_dim: int, init: str = "zeros") -> nn.Module:
    if getattr(src, "has_skip", False):
        raise TypeError("timm CoordAttn(has_skip=True) is not supported; register your own twin")
    return CondCoordAttn.from_parts(
        channels=src.conv1.in_channels,
        cond_dim=cond_dim,
        conv1=src.conv1,
        bn1=src.bn1,
        act=src.act,
        conv_h=src.conv_h,
        conv_w=src.conv_w,
        gate=src.gate,
        init=init,
    )


def _default_mapping() -> dict[type[nn.Module], Builder]:
    table: dict[type[nn.Module], Builder] = {
        SqueezeExcite: CondSqueezeExcite.from_module,
        Cbam: CondCbam.from_module,
        CoordAttn: CondCoordAttn.from_module,
        Eca: CondEca.from_module,
    }
    from torchvision.ops import SqueezeExcitation

    table[SqueezeExcitation] = _from_torchvision_se
    try:  # timm is optional
        from timm.layers.cbam import CbamModule
        from timm.layers.coord_attn import CoordAttn as TimmCoordAttn
        from timm.layers.eca import EcaModule
        from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
        from timm.models._efficientnet_blocks import SqueezeExcite as TimmEffNetSE
    except ImportError:
        return table
    table.update(
        {
            SEModule: _from_timm_se,
            EffectiveSEModule: _from_timm_effective_se,
            EcaModule: _from_timm_eca,
            CbamModule: _from_timm_cbam,
            TimmCoordAttn: _from_timm_coord,
            TimmEffNetSE: _from_timm_efficientnet_se,
        }
    )
    return table


_MAPPING: dict[type[nn.Module], Builder] | None = None
_USER: dict[type[nn.Module], Builder] = {}


def _table() -> dict[type[nn.Module], Builder]:
    global _MAPPING
    if _MAPPING is None:  # filled lazily: no import-time work
        _MAPPING = _default_mapping()
    return _MAPPING


def get_attention_mapping() -> dict[type[nn.Module], Builder]:
    """A copy of the swap table (built-in entries plus registered ones)."""
    return {**_table(), **_USER}


def swappable_types() -> tuple[type[nn.Module], ...]:
    return tuple(get_attention_mapping())


def register_attention(src_type: type[nn.Module], cond_type) -> None:
    """Teach :func:`condattn.convert` a new attention type.

    Args:
        src_type: the plain attention module class.
        cond_type: its twin: a class with ``from_module(src, *, cond_dim, init)`` or any callable
            with that signature. The twin's ``forward(x, cond)`` must return a tensor like ``x``.

    Raises:
        ValueError: if ``src_type`` is already registered.
    """
    if not (isinstance(src_type, type) and issubclass(src_type, nn.Module)):
        raise TypeError(f"src_type must be an nn.Module subclass, got {src_type!r}")
    if src_type in get_attention_mapping():
        raise ValueError(
            f"{src_type.__name__} is already registered (-> {get_attention_mapping()[src_type]}); "
            "call unregister_attention first to replace it"
        )
    _USER[src_type] = _as_builder(cond_type)


def unregister_attention(src_type: type[nn.Module]) -> None:
    """Remove a type added by :func:`register_attention` (built-in entries cannot be removed)."""
    if src_type not in _USER:
        raise KeyError(
            f"{getattr(src_type, '__name__', src_type)} was not added by register_attention"
        )
    del _USER[src_type]


__all__ += ["unregister_attention"]
