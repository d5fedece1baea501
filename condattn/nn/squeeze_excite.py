"""Squeeze-and-Excitation (Hu et al.) and its result-conditioned twin (paper Eqs. 1-6)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from condattn.nn._common import (
    as_cond,
    check_source,
    cond_dim_of,
    copy_into,
    init_cond_columns,
    reduced_channels,
)

__all__ = ["CondSqueezeExcite", "SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation block.

    ``z = avgpool(U)`` (Eq. 1), ``s = gate(W2 act(W1 z))`` (Eq. 2), ``out = s * U`` (Eq. 3).

    The layer layout is the paper's CIFAR SE-ResNet (weiaicunzai/pytorch-cifar100): an
    ``nn.AdaptiveAvgPool2d`` module and two ``nn.Linear`` layers with bias.

    Args:
        channels: C, the channels of U.
        r: reduction ratio; the hidden width is ``C // r`` (the paper uses r=8).
        rd_channels: explicit hidden width C/r; overrides ``r``.
        act_layer: delta, the activation between W1 and W2.
        gate_layer: sigma, the gate.
    """

    def __init__(
        self,
        channels: int,
        *,
        r: int = 8,
        rd_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        rd = reduced_channels(channels, r=r, rd_channels=rd_channels)
        self.channels = channels
        self.pool = nn.AdaptiveAvgPool2d(1)  # Eq. 1: (B, C, H, W) -> (B, C, 1, 1)
        self.fc1 = nn.Linear(channels, rd)  # W1: C -> C/r
        self.act = act_layer()  # delta
        self.fc2 = nn.Linear(rd, channels)  # W2: C/r -> C
        self.gate = gate_layer()  # sigma

    def _scale(self, x: Tensor) -> Tensor:
        """The gate s, shaped ``(B, C, 1, 1)`` (Eq. 2)."""
        z = self.pool(x).flatten(1)  # (B, C)
        s = self.gate(self.fc2(self.act(self.fc1(z))))  # (B, C)
        return s[:, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self._scale(x)  # Eq. 3


class CondSqueezeExcite(nn.Module):
    """SE conditioned on an early prediction T (paper Eqs. 4-6).

    ``z = avgpool(U)``; ``z' = [T; z]`` (Eq. 4); ``s = gate(W2 act(W1 z'))`` (Eq. 5);
    ``out = s * U`` (Eq. 6). W1 is ``C/r x (n + C)``: the first ``n = cond_dim`` columns read T.

    The general form covers the SE variants found in other codebases too: an optional max-pool
    branch mixed into z (timm ``add_maxpool``) and an optional norm after W1 (timm ``norm_layer``).

    Args:
        channels: C.
        cond_dim: n, the length of T (the number of classes of the aux head).
        r: reduction ratio (hidden width ``C // r``).
        rd_channels: explicit hidden width; overrides ``r``.
        act_layer: delta.
        gate_layer: sigma.
        bias: whether W1 and W2 have a bias.
        add_maxpool: z = (avg + max) / 2 instead of avg (timm's option).
        norm: optional module applied to ``W1 z'`` seen as ``(B, C/r, 1, 1)``.
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        r: int = 8,
        rd_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        bias: bool = True,
        add_maxpool: bool = False,
        norm: nn.Module | None = None,
    ):
        super().__init__()
        rd = reduced_channels(channels, r=r, rd_channels=rd_channels)
        self.channels = channels
        self.cond_dim = cond_dim_of(cond_dim)
        self.add_maxpool = add_maxpool
        self.pool = nn.AdaptiveAvgPool2d(1)  # Eq. 1
        self.fc1 = nn.Linear(cond_dim + channels, rd, bias=bias)  # W1 on z' = [T; z]
        self.norm = norm if norm is not None else nn.Identity()
        self.act = act_layer()
        self.fc2 = nn.Linear(rd, channels, bias=bias)  # W2
        self.gate = gate_layer()

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The gate s, shaped ``(B, C, 1, 1)`` (Eq. 5)."""
        t = as_cond(cond, x, self.cond_dim)  # (B, n)
        z = self.pool(x).flatten(1)  # (B, C)
        if self.add_maxpool:
            z = 0.5 * z + 0.5 * x.amax((2, 3))
        h = self.fc1(torch.cat([t, z], dim=1))  # (B, C/r), Eq. 4 then W1
        if not isinstance(self.norm, nn.Identity):
            h = self.norm(h[:, :, None, None]).flatten(1)
        s = self.gate(self.fc2(self.act(h)))  # (B, C)
        return s[:, :, None, None]

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x * self._scale(x, cond)  # Eq. 6

    @classmethod
    def from_module(
        cls, src: SqueezeExcite, *, cond_dim: int, init: str = "zeros"
    ) -> CondSqueezeExcite:
        """Build the twin of a :class:`SqueezeExcite`, copying its weights.

        Args:
            src: the plain block.
            cond_dim: n, the length of T.
            init: ``"zeros"`` (the twin equals ``src`` for any T) or ``"default"``.
        """
        check_source(cls, src, SqueezeExcite)
        return cls.from_parts(
            channels=src.channels,
            cond_dim=cond_dim,
            fc1=src.fc1,
            fc2=src.fc2,
            act=src.act,
            gate=src.gate,
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
        gate: nn.Module,
        init: str = "zeros",
        add_maxpool: bool = False,
        norm: nn.Module | None = None,
    ) -> CondSqueezeExcite:
        """Build from the layers of any SE: ``fc1``/``fc2`` may be Linear or 1x1 Conv2d."""
        if (fc1.bias is None) != (fc2.bias is None):
            raise ValueError("fc1 and fc2 must both have a bias or both have none")
        rd = fc1.weight.shape[0]
        out = cls(
            channels,
            cond_dim=cond_dim,
            rd_channels=rd,
            bias=fc1.bias is not None,
            add_maxpool=add_maxpool,
            norm=copy.deepcopy(norm),
        )
        out.act = copy.deepcopy(act)
        out.gate = copy.deepcopy(gate)
        w1 = out.fc1.weight
        copy_into(w1[:, cond_dim:], fc1.weight.detach())
        init_cond_columns(w1, cond_dim, init)
        copy_into(out.fc2.weight, fc2.weight.detach())
        with torch.no_grad():
            if fc1.bias is not None:
                out.fc1.bias.copy_(fc1.bias)
                out.fc2.bias.copy_(fc2.bias)
        return out.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
