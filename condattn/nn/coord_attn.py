"""Coordinate attention (Hou et al.) and its result-conditioned twin."""

from __future__ import annotations

import copy

import torch
from einops import rearrange, reduce
from torch import Tensor, nn

from condattn.nn._common import (
    as_cond,
    check_positive_int,
    check_source,
    cond_conv1x1,
    cond_dim_of,
    load_layer,
    source_channels,
)

__all__ = ["CondCoordAttn", "CoordAttn"]


def _coord_hidden(channels: int, r: int, rd_channels: int | None, min_channels: int) -> int:
    check_positive_int("channels", channels)
    if rd_channels is not None:
        return check_positive_int("rd_channels", rd_channels)
    check_positive_int("r", r)
    # min_channels >= 1 floors mip, so r > channels is fine (the original: max(8, C // 32)).
    check_positive_int("min_channels", min_channels)
    return max(min_channels, channels // r)


def _pool_hw(x: Tensor) -> Tensor:
    """``[mean_W(x); mean_H(x)]`` stacked along one spatial axis: ``(B, C, H + W, 1)``."""
    x_h = reduce(x, "b c h w -> b c h 1", "mean")  # pool along W: one value per row
    x_w = reduce(x, "b c h w -> b c w 1", "mean")  # pool along H: one value per column
    return torch.cat([x_h, x_w], dim=2)


def _split_hw(y: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Undo :func:`_pool_hw`'s stacking: ``(B, mip, H + W, 1)`` -> ``(B, mip, H, 1)``,
    ``(B, mip, 1, W)``."""
    y_h, y_w = torch.split(y, [h, w], dim=2)
    return y_h, rearrange(y_w, "b c w 1 -> b c 1 w")


class CoordAttn(nn.Module):
    """Coordinate attention.

    ``y = act(BN(W1 [pool_W(U); pool_H(U)]))`` with a shared 1x1 conv W1 (C -> mip),
    ``a_h = gate(W_h y_h)``, ``a_w = gate(W_w y_w)``, ``out = U * a_h * a_w``.

    Args:
        channels: C.
        r: reduction ratio; hidden width ``mip = max(min_channels, C // r)``.
        rd_channels: explicit mip; overrides ``r``.
        min_channels: lower bound of mip (8 in the original code).
        act_layer: activation after BN (h-swish in the original).
        gate_layer: the gate.
    """

    def __init__(
        self,
        channels: int,
        *,
        r: int = 32,
        rd_channels: int | None = None,
        min_channels: int = 8,
        act_layer: type[nn.Module] = nn.Hardswish,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        mip = _coord_hidden(channels, r, rd_channels, min_channels)
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, mip, 1)  # W1, shared by both axes
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = act_layer()
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)
        self.gate = gate_layer()

    def _gates(self, y: Tensor, h: int, w: int) -> Tensor:
        y_h, y_w = _split_hw(self.act(self.bn1(y)), h, w)  # (B, mip, H, 1), (B, mip, 1, W)
        a_h = self.gate(self.conv_h(y_h))  # (B, C, H, 1)
        a_w = self.gate(self.conv_w(y_w))  # (B, C, 1, W)
        return a_h * a_w  # (B, C, H, W)

    def _scale(self, x: Tensor) -> Tensor:
        """The gate ``a_h * a_w``: ``(B, C, H, W)``."""
        return self._gates(self.conv1(_pool_hw(x)), x.shape[2], x.shape[3])

    def forward(self, x: Tensor) -> Tensor:
        return x * self._scale(x)


class CondCoordAttn(nn.Module):
    """Coordinate attention whose shared 1x1 conv also reads T (Eq. 4 for CA).

    T is broadcast as ``n`` extra input channels at every one of the ``H + W`` positions of the
    pooled map: ``y = W1 [T; pool(U)] = W1_U pool(U) + W1_T T``. So T acts as a learned
    per-sample bias before BN. It is computed that way (no broadcast copy), and W1 is stored as
    one ``mip x (n + C)`` conv, gaining ``n x mip`` parameters.

    Args:
        channels: C.
        cond_dim: n.
        r, rd_channels, min_channels, act_layer, gate_layer: as :class:`CoordAttn`.
        bias: whether the convs have a bias (the original yes, timm no).

    The norm after W1 is a ``BatchNorm2d(mip)``; :meth:`from_parts` replaces it by the source's
    (any module mapping ``(B, mip, H + W, 1)`` to itself).
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        r: int = 32,
        rd_channels: int | None = None,
        min_channels: int = 8,
        act_layer: type[nn.Module] = nn.Hardswish,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        bias: bool = True,
    ):
        super().__init__()
        mip = _coord_hidden(channels, r, rd_channels, min_channels)
        self.channels = channels
        self.cond_dim = cond_dim_of(cond_dim)
        self.conv1 = nn.Conv2d(cond_dim + channels, mip, 1, bias=bias)  # W1 on [T; pool(U)]
        self.bn1: nn.Module = nn.BatchNorm2d(mip)
        self.act = act_layer()
        self.conv_h = nn.Conv2d(mip, channels, 1, bias=bias)
        self.conv_w = nn.Conv2d(mip, channels, 1, bias=bias)
        self.gate = gate_layer()

    _gates = CoordAttn._gates

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The gate ``a_h * a_w``: ``(B, C, H, W)``."""
        t = as_cond(cond, x, self.cond_dim)
        y = cond_conv1x1(self.conv1, _pool_hw(x), t, self.cond_dim)  # W1 [T; pool], T everywhere
        return self._gates(y, x.shape[2], x.shape[3])

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x * self._scale(x, cond)

    @classmethod
    def from_module(
        cls, src: CoordAttn, *, cond_dim: int, channels: int | None = None, init: str = "zeros"
    ) -> CondCoordAttn:
        """Build the twin of a :class:`CoordAttn` (zero T-columns by default).

        ``channels`` (C), when given, is checked against ``src.channels``.
        """
        check_source(cls, src, CoordAttn)
        return cls.from_parts(
            channels=source_channels(cls, channels, known=src.channels),
            cond_dim=cond_dim,
            conv1=src.conv1,
            bn1=src.bn1,
            act=src.act,
            conv_h=src.conv_h,
            conv_w=src.conv_w,
            gate=src.gate,
            init=init,
        )

    @classmethod
    def from_parts(
        cls,
        *,
        channels: int,
        cond_dim: int,
        conv1: nn.Conv2d,
        bn1: nn.Module,
        act: nn.Module,
        conv_h: nn.Conv2d,
        conv_w: nn.Conv2d,
        gate: nn.Module,
        init: str = "zeros",
    ) -> CondCoordAttn:
        """Build from the layers of any coordinate attention."""
        out = cls(
            channels,
            cond_dim=cond_dim,
            rd_channels=conv1.out_channels,
            bias=conv1.bias is not None,
        )
        out.bn1 = copy.deepcopy(bn1)
        out.act = copy.deepcopy(act)
        out.gate = copy.deepcopy(gate)
        out.conv_h = copy.deepcopy(conv_h)
        out.conv_w = copy.deepcopy(conv_w)
        load_layer(out.conv1, conv1, cond_dim=cond_dim, init=init)
        return out.to(device=conv1.weight.device, dtype=conv1.weight.dtype)
