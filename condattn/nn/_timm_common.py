"""Parts shared by the twins of timm's attention types.

Nothing here imports timm at import time: the twin classes work without it, and only their
``from_module`` looks timm's classes up (:func:`check_timm_source`) to check a source's type.
"""

from __future__ import annotations

import copy
import importlib

from torch import Tensor, nn

from condattn.nn._common import check_source, cond_conv1x1, cond_dim_of, load_layer

__all__ = [
    "CondConvMlp",
    "check_timm_source",
    "make_divisible",
    "timm_type",
]


def timm_type(module: str, name: str) -> type | None:
    """timm's class ``module.name``, or None when timm is not installed."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, name)


def check_timm_source(cls: type, src: nn.Module, module: str, name: str) -> None:
    """Raise TypeError unless ``src`` is timm's ``module.name`` (or a subclass of it)."""
    expected = timm_type(module, name)
    if expected is None:
        raise TypeError(
            f"{cls.__name__}.from_module expects timm's {name} ({module}), but timm is not "
            f"installed, so a {type(src).__name__} cannot be one"
        )
    check_source(cls, src, expected)


def make_divisible(
    v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9
) -> int:
    """timm's channel rounding: the nearest multiple of ``divisor``, at least ``min_value``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class CondConvMlp(nn.Module):
    """timm's ``ConvMlp`` whose first 1x1 conv also reads T (Eq. 4 on a pooled map).

    ``y = W2 drop(act(norm(W1 [T; g])))`` with T broadcast over the positions of ``g``, i.e.
    ``W1 [T; g] = W1_g g + W1_T T`` (see :func:`cond_conv1x1`). W1 is one
    ``hidden x (n + C)`` 1x1 conv whose first n input columns read T: ``n x hidden`` parameters
    more than the source.

    Args:
        in_features: C, the channels of g.
        hidden_features: the hidden width (C/r).
        out_features: the output channels (default C).
        cond_dim: n.
        act_layer: the activation.
        norm: optional module after W1 (timm's GlobalContext uses LayerNorm2d).
        bias: whether W1 and W2 have a bias.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        cond_dim: int,
        act_layer: type[nn.Module] = nn.ReLU,
        norm: nn.Module | None = None,
        bias: bool = True,
    ):
        super().__init__()
        self.cond_dim = cond_dim_of(cond_dim)
        out_features = out_features or in_features
        self.fc1 = nn.Conv2d(cond_dim + in_features, hidden_features, 1, bias=bias)  # W1
        self.norm = norm if norm is not None else nn.Identity()
        self.act = act_layer()
        self.drop: nn.Module = nn.Dropout(0.0)
        self.fc2 = nn.Conv2d(hidden_features, out_features, 1, bias=bias)  # W2

    def forward(self, g: Tensor, t: Tensor) -> Tensor:
        """g ``(B, C, h, w)`` and t ``(B, n)`` (already checked) -> ``(B, C', h, w)``."""
        y = cond_conv1x1(self.fc1, g, t, self.cond_dim)  # W1 [T; g]: (B, hidden, h, w)
        return self.fc2(self.drop(self.act(self.norm(y))))

    @classmethod
    def from_conv_mlp(cls, src: nn.Module, *, cond_dim: int, init: str = "zeros") -> CondConvMlp:
        """Build from a timm ``ConvMlp`` (fc1, norm, act, drop, fc2), copying its weights."""
        check_timm_source(cls, src, "timm.layers.mlp", "ConvMlp")
        fc1 = src.fc1
        if fc1.kernel_size != (1, 1) or fc1.groups != 1 or fc1.stride != (1, 1):
            raise TypeError(f"ConvMlp.fc1 must be a 1x1, stride-1, groups=1 conv, got {fc1}")
        out = cls(
            fc1.in_channels,
            fc1.out_channels,
            src.fc2.out_channels,
            cond_dim=cond_dim,
            bias=fc1.bias is not None,
        )
        out.norm = copy.deepcopy(src.norm)
        out.act = copy.deepcopy(src.act)
        out.drop = copy.deepcopy(src.drop)
        out.fc2 = copy.deepcopy(src.fc2)  # its own bias setting (ConvMlp's bias may be a pair)
        load_layer(out.fc1, fc1, cond_dim=cond_dim, init=init)
        return out.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
