"""The result-conditioned twin of timm's lightweight CBAM (``LightCbamModule``)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from condattn.nn._common import (
    as_cond,
    channel_mean,
    check_positive_int,
    cond_dim_of,
    global_avg_pool,
    load_layer,
    reduced_channels,
    source_channels,
)
from condattn.nn._timm_common import check_timm_source, timm_type

torch.fx.wrap("channel_mean")  # traced as one call: its dtype and layout tests need tensors
torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["CondLightCbam"]


def _mix_pool(x: Tensor, dims: int | tuple[int, ...]) -> Tensor:
    """``(mean + max) / 2`` over ``dims`` (keepdim), timm's light pooling."""
    mean = global_avg_pool(x) if dims == (2, 3) else channel_mean(x)
    return 0.5 * mean + 0.5 * x.amax(dims, keepdim=True)


class CondLightCbam(nn.Module):
    """Light CBAM whose channel MLP reads ``[T; z]`` (Eq. 4 for CBAM, as :class:`CondCbam`).

    timm's light variant pools once, mixing average and max, for both attentions:

    - channel: ``z = (avg(U) + max(U)) / 2``; ``c = sigmoid(W2 act(W1 [T; z]))``, ``(B, C, 1, 1)``
      (a sigmoid whatever ``gate_layer``, as in timm's ``LightChannelAttn``);
    - spatial: ``p = gate(BN(conv_k((mean_c(cU) + max_c(cU)) / 2)))``, ``(B, 1, H, W)``;
    - ``out = U * c * p``.

    T joins the squeezed descriptor where it enters the learned map, W1; the spatial attention is
    unchanged. W1 gains ``n x C/r`` parameters.

    Args:
        channels: C.
        cond_dim: n, the length of T.
        r: reduction ratio of the MLP (hidden width ``C // r``).
        rd_channels: explicit hidden width; overrides ``r``.
        kernel_size: k of the spatial conv (odd).
        act_layer: the MLP activation.
        gate_layer: the spatial gate.
        bias: whether the MLP layers have a bias (timm: none).
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        r: int = 16,
        rd_channels: int | None = None,
        kernel_size: int = 7,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        bias: bool = False,
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
        self.fc2 = nn.Linear(rd, channels, bias=bias)  # W2
        self.spatial_conv: nn.Module = nn.Conv2d(
            1, 1, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.spatial_norm: nn.Module = nn.BatchNorm2d(1)
        self.spatial_gate = gate_layer()

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The combined gate ``c * p``: ``(B, C, H, W)``."""
        t = as_cond(cond, x, self.cond_dim)  # (B, n)
        z = _mix_pool(x, (2, 3)).flatten(1)  # (B, C)
        h = self.fc2(self.act(self.fc1(torch.cat([t, z], dim=1))))  # W2 act(W1 [T; z])
        c = torch.sigmoid(h)[:, :, None, None]  # (B, C, 1, 1)
        p = self.spatial_gate(self.spatial_norm(self.spatial_conv(_mix_pool(x * c, 1))))
        return c * p  # (B, C, H, W)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x * self._scale(x, cond)

    @classmethod
    def from_module(
        cls,
        src: nn.Module,
        *,
        cond_dim: int,
        channels: int | None = None,
        init: str = "zeros",
    ) -> CondLightCbam:
        """Build the twin of a timm ``LightCbamModule``, copying its weights.

        Args:
            src: the ``LightCbamModule``.
            cond_dim: n.
            channels: C, the traced input's channels (checked against the source).
            init: ``"zeros"`` (the twin equals ``src`` for any T) or ``"default"``.

        Raises:
            TypeError: if ``src`` is not a ``LightCbamModule`` or its parts are not timm's
                ``LightChannelAttn`` / ``LightSpatialAttn``.
        """
        check_timm_source(cls, src, "timm.layers.cbam", "LightCbamModule")
        for part, name in (("channel", "LightChannelAttn"), ("spatial", "LightSpatialAttn")):
            if not isinstance(getattr(src, part), timm_type("timm.layers.cbam", name)):
                raise TypeError(
                    f"LightCbamModule.{part} must be timm's {name}, "
                    f"got {type(getattr(src, part)).__name__}"
                )
        ch, sp = src.channel, src.spatial
        if (ch.fc1.bias is None) != (ch.fc2.bias is None):
            raise TypeError("LightCbamModule's fc1 and fc2 must both have a bias or both none")
        c = source_channels(cls, channels, known=ch.fc1.in_channels)
        out = cls(
            c,
            cond_dim=cond_dim,
            rd_channels=ch.fc1.out_channels,
            bias=ch.fc1.bias is not None,
        )
        out.act = copy.deepcopy(ch.act)
        out.spatial_conv = copy.deepcopy(sp.conv)  # timm's ConvNormAct: conv + BN, no act
        out.spatial_norm = nn.Identity()
        out.spatial_gate = copy.deepcopy(sp.gate)
        load_layer(out.fc1, ch.fc1, cond_dim=cond_dim, init=init)
        load_layer(out.fc2, ch.fc2)
        w = ch.fc1.weight
        return out.to(device=w.device, dtype=w.dtype)
