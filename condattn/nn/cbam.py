"""CBAM (Woo et al.) and its result-conditioned twin."""

from __future__ import annotations

import copy

import torch
from einops import reduce
from torch import Tensor, nn

from condattn.nn._common import (
    as_cond,
    channel_mean,
    check_positive_int,
    check_source,
    cond_dim_of,
    global_avg_pool,
    load_layer,
    reduced_channels,
    source_channels,
)

torch.fx.wrap("channel_mean")  # traced as one call: its dtype and layout tests need tensors
torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["Cbam", "CondCbam"]


def _spatial_descriptor(x: Tensor) -> Tensor:
    """``[mean_c(x); max_c(x)]``, shaped ``(B, 2, H, W)`` (the timm order)."""
    return torch.cat([channel_mean(x), reduce(x, "b c h w -> b 1 h w", "max")], dim=1)


def _channel_descriptors(x: Tensor) -> tuple[Tensor, Tensor]:
    """``avg(U)`` and ``max(U)`` over the spatial axes, each ``(B, C)``."""
    return global_avg_pool(x).flatten(1), reduce(x, "b c h w -> b c", "max")


class Cbam(nn.Module):
    """Convolutional Block Attention Module: a channel gate, then a spatial gate.

    Channel: ``c = gate(W2 act(W1 avg(U)) + W2 act(W1 max(U)))``, shaped ``(B, C, 1, 1)``.
    Spatial: ``p = gate(BN(conv_k([mean_c(cU); max_c(cU)])))``, shaped ``(B, 1, H, W)``.
    Output: ``U * c * p``.

    Args:
        channels: C.
        r: reduction ratio of the shared MLP (hidden width ``C // r``).
        rd_channels: explicit hidden width; overrides ``r``.
        kernel_size: k of the spatial conv (odd).
        act_layer: the MLP activation.
        gate_layer: the gate of both attentions.
    """

    def __init__(
        self,
        channels: int,
        *,
        r: int = 8,
        rd_channels: int | None = None,
        kernel_size: int = 7,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        rd = reduced_channels(channels, r=r, rd_channels=rd_channels)
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.channels = channels
        self.fc1 = nn.Linear(channels, rd)  # W1 of the shared MLP
        self.act = act_layer()
        self.fc2 = nn.Linear(rd, channels)  # W2
        self.channel_gate = gate_layer()
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.spatial_norm = nn.BatchNorm2d(1)
        self.spatial_gate = gate_layer()

    def _mlp(self, z: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(z)))

    def _spatial(self, xc: Tensor) -> Tensor:
        return self.spatial_gate(self.spatial_norm(self.spatial_conv(_spatial_descriptor(xc))))

    def _scale(self, x: Tensor) -> Tensor:
        """The combined gate ``c * p``, broadcastable to ``x``: ``(B, C, H, W)``."""
        avg, mx = _channel_descriptors(x)
        c = self.channel_gate(self._mlp(avg) + self._mlp(mx))
        c = c[:, :, None, None]  # (B, C, 1, 1)
        return c * self._spatial(x * c)  # (B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        return x * self._scale(x)


class CondCbam(nn.Module):
    """CBAM whose channel MLP reads ``[T; avg(U)]`` and ``[T; max(U)]`` (Eq. 4 for CBAM).

    ``c = gate(W2 act(W1 [T; avg(U)]) + W2 act(W1 [T; max(U)]))``: T is concatenated where the
    block has a squeezed channel descriptor going into a learned map, for both descriptors. The
    spatial attention is unchanged. W1 gains ``n x C/r`` parameters.

    Args:
        channels: C.
        cond_dim: n, the length of T.
        r, rd_channels, kernel_size, act_layer, gate_layer: as :class:`Cbam`.
        bias: whether the MLP layers have a bias (timm's CBAM has none).
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        r: int = 8,
        rd_channels: int | None = None,
        kernel_size: int = 7,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        bias: bool = True,
    ):
        super().__init__()
        rd = reduced_channels(channels, r=r, rd_channels=rd_channels)
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.channels = channels
        self.cond_dim = cond_dim_of(cond_dim)
        self.fc1 = nn.Linear(cond_dim + channels, rd, bias=bias)  # W1 on [T; z]
        self.act = act_layer()
        self.fc2 = nn.Linear(rd, channels, bias=bias)
        self.channel_gate = gate_layer()
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.spatial_norm: nn.Module = nn.BatchNorm2d(1)
        self.spatial_gate = gate_layer()

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The combined gate ``c * p``: ``(B, C, H, W)``."""
        t = as_cond(cond, x, self.cond_dim)
        b = x.shape[0]
        # Both descriptors go through the shared MLP in one batched call: (2B, n + C).
        z = torch.cat(_channel_descriptors(x), dim=0)
        h = self.fc2(self.act(self.fc1(torch.cat([t.repeat(2, 1), z], dim=1))))
        c = self.channel_gate(h[:b] + h[b:])[:, :, None, None]  # (B, C, 1, 1)
        xc = x * c
        p = self.spatial_gate(self.spatial_norm(self.spatial_conv(_spatial_descriptor(xc))))
        return c * p

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x * self._scale(x, cond)

    @classmethod
    def from_module(
        cls, src: Cbam, *, cond_dim: int, channels: int | None = None, init: str = "zeros"
    ) -> CondCbam:
        """Build the twin of a :class:`Cbam`, copying its weights (zero T-columns by default).

        ``channels`` (C), when given, is checked against ``src.channels``.
        """
        check_source(cls, src, Cbam)
        return cls.from_parts(
            channels=source_channels(cls, channels, known=src.channels),
            cond_dim=cond_dim,
            fc1=src.fc1,
            fc2=src.fc2,
            act=src.act,
            channel_gate=src.channel_gate,
            spatial_conv=src.spatial_conv,
            spatial_norm=src.spatial_norm,
            spatial_gate=src.spatial_gate,
            init=init,
        )

    @classmethod
    def from_parts(
        cls,
        *,
        channels: int,
        cond_dim: int,
        fc1: nn.Module,
        fc2: nn.Module,
        act: nn.Module,
        channel_gate: nn.Module,
        spatial_conv: nn.Module,
        spatial_norm: nn.Module,
        spatial_gate: nn.Module,
        init: str = "zeros",
    ) -> CondCbam:
        """Build from the layers of any CBAM (MLP layers may be Linear or 1x1 Conv2d)."""
        if (fc1.bias is None) != (fc2.bias is None):
            raise ValueError("fc1 and fc2 must both have a bias or both have none")
        out = cls(
            channels,
            cond_dim=cond_dim,
            rd_channels=fc1.weight.shape[0],
            bias=fc1.bias is not None,
        )
        out.act = copy.deepcopy(act)
        out.channel_gate = copy.deepcopy(channel_gate)
        out.spatial_conv = copy.deepcopy(spatial_conv)
        out.spatial_norm = copy.deepcopy(spatial_norm)
        out.spatial_gate = copy.deepcopy(spatial_gate)
        load_layer(out.fc1, fc1, cond_dim=cond_dim, init=init)
        load_layer(out.fc2, fc2)
        return out.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
