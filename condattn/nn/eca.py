"""Efficient Channel Attention (Wang et al.) and its result-conditioned twin."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from condattn.nn._common import (
    as_cond,
    check_init,
    check_positive_int,
    check_source,
    cond_dim_of,
    global_avg_pool,
    source_channels,
)

torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["CondEca", "Eca", "eca_kernel_size"]


def eca_kernel_size(channels: int, *, gamma: int = 2, beta: int = 1) -> int:
    """The adaptive kernel size of ECA: the odd number nearest ``|log2(C) + beta| / gamma``."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return max(t if t % 2 else t + 1, 1)


def _eca_conv(channels: int, kernel_size: int | None, *, gamma: int, beta: int) -> nn.Conv1d:
    """The 1-D conv across channels (odd k, adaptive when ``kernel_size`` is None, no bias)."""
    check_positive_int("channels", channels)
    k = (
        kernel_size
        if kernel_size is not None
        else eca_kernel_size(channels, gamma=gamma, beta=beta)
    )
    check_positive_int("kernel_size", k)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {k}")
    return nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)


def _channel_logits(conv: nn.Conv1d, x: Tensor) -> Tensor:
    z = global_avg_pool(x).flatten(1)  # Eq. 1: (B, C)
    return conv(z[:, None, :])[:, 0, :]  # 1-D conv across channels: (B, C)


class Eca(nn.Module):
    """ECA: ``s = gate(conv1d_k(avgpool(U)))`` over the channel axis; ``out = s * U``.

    Args:
        channels: C (sets the adaptive kernel size when ``kernel_size`` is None).
        kernel_size: k of the 1-D conv across channels (odd).
        gamma, beta: the adaptive kernel-size rule.
        gate_layer: the gate.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: int = 2,
        beta: int = 1,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        self.channels = channels
        self.conv = _eca_conv(channels, kernel_size, gamma=gamma, beta=beta)
        self.gate = gate_layer()

    def _scale(self, x: Tensor) -> Tensor:
        """The gate s: ``(B, C, 1, 1)``."""
        return self.gate(_channel_logits(self.conv, x))[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self._scale(x)


class CondEca(nn.Module):
    """ECA with a linear map of T added to the gate's pre-activation.

    ECA has no fully connected layer to widen, so Eq. 4 becomes
    ``s = gate(conv1d_k(z) + W_T T)`` with ``W_T`` of shape ``C x n`` (no bias): the same as an
    fc over ``[T; z]`` whose z-part is the banded conv. It gains ``n x C`` parameters.

    Args:
        channels: C.
        cond_dim: n.
        kernel_size, gamma, beta, gate_layer: as :class:`Eca`.
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        kernel_size: int | None = None,
        gamma: int = 2,
        beta: int = 1,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        self.channels = channels
        self.conv = _eca_conv(channels, kernel_size, gamma=gamma, beta=beta)
        self.gate = gate_layer()
        self.cond_dim = cond_dim_of(cond_dim)
        self.cond_fc = nn.Linear(cond_dim, channels, bias=False)  # W_T

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The gate s: ``(B, C, 1, 1)``."""
        t = as_cond(cond, x, self.cond_dim)
        return self.gate(_channel_logits(self.conv, x) + self.cond_fc(t))[:, :, None, None]

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x * self._scale(x, cond)

    @classmethod
    def from_module(
        cls, src: Eca, *, cond_dim: int, channels: int | None = None, init: str = "zeros"
    ) -> CondEca:
        """Build the twin of an :class:`Eca` (``W_T = 0`` by default).

        ``channels`` (C), when given, is checked against ``src.channels``.
        """
        check_source(cls, src, Eca)
        return cls.from_parts(
            channels=source_channels(cls, channels, known=src.channels),
            cond_dim=cond_dim,
            conv=src.conv,
            gate=src.gate,
            init=init,
        )

    @classmethod
    def from_parts(
        cls, *, channels: int, cond_dim: int, conv: nn.Conv1d, gate: nn.Module, init: str = "zeros"
    ) -> CondEca:
        """Build from the 1-D conv and gate of any ECA."""
        check_init(init)
        out = cls(channels, cond_dim=cond_dim, kernel_size=conv.kernel_size[0])
        out.conv = copy.deepcopy(conv)
        out.gate = copy.deepcopy(gate)
        with torch.no_grad():
            if init == "zeros":
                out.cond_fc.weight.zero_()
            # "default": keep nn.Linear's own init (fan-in n), the from-scratch layer.
        return out.to(device=conv.weight.device, dtype=conv.weight.dtype)
