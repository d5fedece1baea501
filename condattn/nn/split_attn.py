"""The result-conditioned twin of timm's Split-Attention conv (ResNeSt, Zhang et al., 2020)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condattn.nn._common import (
    as_cond,
    check_positive_int,
    cond_dim_of,
    global_avg_pool,
    init_cond_matrix,
    source_channels,
)
from condattn.nn._timm_common import (
    check_timm_source,
    make_divisible,
    timm_type,
)

torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["CondSplitAttn"]


def _radix_softmax(x: Tensor, radix: int, cardinality: int) -> Tensor:
    """timm's ``RadixSoftmax``: softmax across the R splits of each group, sigmoid when R = 1."""
    b = x.size(0)
    if radix > 1:
        x = x.view(b, cardinality, radix, -1).transpose(1, 2)  # (B, R, K, C/K)
        return F.softmax(x, dim=1).reshape(b, -1)  # (B, R * C), split-major
    return torch.sigmoid(x)


class CondSplitAttn(nn.Module):
    """Split-Attention conv whose attention MLP also reads T (Eq. 4 for ResNeSt).

    A conv block containing its attention, so the twin replaces the whole block. The grouped conv
    gives R splits ``V_r`` of C channels each (``act(BN(conv(U)))``, ``(B, R, C, H, W)``). Fuse:
    ``z = avgpool(sum_r V_r)``. T joins the gap descriptor before fc1:
    ``h = act(BN(W1 [T; z]))``, ``a = rsoftmax(W2 h)`` (softmax across the splits, or a sigmoid
    when R = 1), ``out = sum_r a_r * V_r``: ``(B, C, H', W')``, what the source returns.

    With cardinality K > 1, ``W1`` is grouped; every group reads all of T. So ``W1 [T; z] =
    W1_z z + W1_T T`` is kept as the source's grouped ``fc1`` (``W1_z``) plus a dense ``fc1_cond``
    (``W1_T``, ``attn_channels x n``, no bias): ``n x attn_channels`` more parameters.

    Args:
        in_channels: the channels of U.
        out_channels: C (default ``in_channels``).
        cond_dim: n, the length of T.
        kernel_size, stride, padding, dilation, bias: the split conv's.
        groups: the cardinality K.
        radix: R.
        attn_channels: the width of h (default timm's rule: ``in_channels * R / 4`` rounded to a
            multiple of 8, at least 32).
        act_layer: the activation.
        norm_layer: the norm after the conv and after ``W1`` (none by default, as timm).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        cond_dim: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        radix: int = 2,
        attn_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] | None = None,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.cond_dim = cond_dim_of(cond_dim)
        self.radix = check_positive_int("radix", radix)
        self.cardinality = check_positive_int("groups", groups)
        mid = out_channels * radix
        attn = attn_channels or make_divisible(in_channels * radix * 0.25, 8, min_value=32)
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels,
            mid,
            kernel_size,
            stride,
            padding,
            dilation,
            groups=groups * radix,
            bias=bias,
        )
        self.bn0: nn.Module = norm_layer(mid) if norm_layer else nn.Identity()
        self.drop: nn.Module = nn.Identity()
        self.act0 = act_layer()
        self.fc1 = nn.Conv2d(out_channels, attn, 1, groups=groups)  # W1_z
        self.fc1_cond = nn.Linear(cond_dim, attn, bias=False)  # W1_T: every group reads T
        init_cond_matrix(self.fc1_cond.weight, init="default", fan_in=cond_dim + self._group_in)
        self.bn1: nn.Module = norm_layer(attn) if norm_layer else nn.Identity()
        self.act1 = act_layer()
        self.fc2 = nn.Conv2d(attn, mid, 1, groups=groups)  # W2

    @property
    def _group_in(self) -> int:
        """The inputs of one group of ``fc1`` (its fan-in without T)."""
        return self.fc1.in_channels // self.fc1.groups

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The split weights a, ``(B, R * C, 1, 1)``, of the splits x, ``(B, R * C, H, W)``."""
        t = as_cond(cond, x, self.cond_dim)  # (B, n)
        b, rc, h, w = x.shape
        z = x.reshape(b, self.radix, rc // self.radix, h, w).sum(1) if self.radix > 1 else x
        z = global_avg_pool(z)  # (B, C, 1, 1)
        h1 = self.fc1(z) + self.fc1_cond(t)[:, :, None, None]  # W1 [T; z] = W1_z z + W1_T T
        a = self.fc2(self.act1(self.bn1(h1)))  # (B, R * C, 1, 1)
        return _radix_softmax(a, self.radix, self.cardinality).view(b, -1, 1, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = self.act0(self.drop(self.bn0(self.conv(x))))  # the R splits: (B, R * C, H', W')
        b, rc, h, w = x.shape
        a = self._scale(x, cond)  # (B, R * C, 1, 1)
        if self.radix > 1:
            c = rc // self.radix
            out = (x.reshape(b, self.radix, c, h, w) * a.reshape(b, self.radix, c, 1, 1)).sum(1)
        else:
            out = x * a
        return out.contiguous()

    @classmethod
    def from_module(
        cls,
        src: nn.Module,
        *,
        cond_dim: int,
        channels: int | None = None,
        init: str = "zeros",
    ) -> CondSplitAttn:
        """Build the twin of a timm ``SplitAttn``, copying its layers.

        Args:
            src: the ``SplitAttn``.
            cond_dim: n.
            channels: the traced input's channels (checked against the source's conv).
            init: ``"zeros"`` (``W1_T = 0``: the twin equals ``src`` for any T) or ``"default"``
                (uniform in ``+-1/sqrt(n + C/K)``, the bound of fc1 widened by T).

        Raises:
            TypeError: if ``src`` is not a ``SplitAttn`` or its ``rsoftmax`` is not timm's
                ``RadixSoftmax`` matching its radix and fc1's groups.
        """
        check_timm_source(cls, src, "timm.layers.split_attn", "SplitAttn")
        rs = src.rsoftmax
        if not isinstance(rs, timm_type("timm.layers.split_attn", "RadixSoftmax")):
            raise TypeError(f"SplitAttn.rsoftmax must be timm's RadixSoftmax, got {type(rs)}")
        if rs.radix != src.radix or rs.cardinality != src.fc1.groups:
            raise TypeError(
                f"SplitAttn.rsoftmax (radix={rs.radix}, cardinality={rs.cardinality}) does not "
                f"match radix={src.radix} and fc1's groups={src.fc1.groups}"
            )
        c = source_channels(cls, channels, known=src.conv.in_channels)
        out = cls(
            c,
            src.conv.out_channels // src.radix,
            cond_dim=cond_dim,
            groups=rs.cardinality,
            radix=src.radix,
            attn_channels=src.fc1.out_channels,
        )
        for name in ("conv", "bn0", "drop", "act0", "fc1", "bn1", "act1", "fc2"):
            setattr(out, name, copy.deepcopy(getattr(src, name)))
        init_cond_matrix(out.fc1_cond.weight, init=init, fan_in=cond_dim + out._group_in)
        w = src.fc1.weight
        return out.to(device=w.device, dtype=w.dtype)
