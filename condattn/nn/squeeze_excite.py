"""Squeeze-and-Excitation (Hu et al.) and its result-conditioned twin (paper Eqs. 1-6)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from condattn.nn._common import (
    GlobalAvgPool,
    as_cond,
    check_source,
    cond_dim_of,
    global_avg_pool,
    load_layer,
    reduced_channels,
    source_channels,
)

torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["CondEffectiveSE", "CondLinear", "CondSqueezeExcite", "SqueezeExcite"]


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
        self.pool = GlobalAvgPool()  # Eq. 1: (B, C, H, W) -> (B, C, 1, 1)
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
        self.pool = GlobalAvgPool()  # Eq. 1
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
        cls,
        src: SqueezeExcite,
        *,
        cond_dim: int,
        channels: int | None = None,
        init: str = "zeros",
    ) -> CondSqueezeExcite:
        """Build the twin of a :class:`SqueezeExcite`, copying its weights.

        Args:
            src: the plain block.
            cond_dim: n, the length of T.
            channels: C, checked against ``src.channels`` (default: ``src.channels``).
            init: ``"zeros"`` (the twin equals ``src`` for any T) or ``"default"``.
        """
        check_source(cls, src, SqueezeExcite)
        return cls.from_parts(
            channels=source_channels(cls, channels, known=src.channels),
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
        load_layer(out.fc1, fc1, cond_dim=cond_dim, init=init)
        load_layer(out.fc2, fc2)
        return out.to(device=fc1.weight.device, dtype=fc1.weight.dtype)


class CondLinear(nn.Module):
    """The W1 of an SE written inline (no SE module), widened to read ``[T; z]`` (Eq. 4).

    Built from the first learned map of the recognised pattern ``x * gate(W2 act(W1 pool(x)))``:
    a ``Linear`` on ``(B, C)`` or a 1x1 ``Conv2d`` on ``(B, C, H, W)``. The rest of the inline
    SE stays as it was. ``weight`` keeps the source's layout with ``n`` leading input columns.

    Args:
        in_features: C.
        out_features: C/r.
        cond_dim: n.
        bias: whether there is a bias.
        conv: whether the source is a 1x1 ``Conv2d`` (input ``(B, C, H, W)``) or a ``Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        cond_dim: int,
        bias: bool = True,
        conv: bool = False,
    ):
        super().__init__()
        self.cond_dim = cond_dim_of(cond_dim)
        self.in_features = in_features
        self.out_features = out_features
        self.conv = conv
        shape = (out_features, cond_dim + in_features) + ((1, 1) if conv else ())
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # PyTorch's Linear/Conv default
        if self.bias is not None:
            bound = 1.0 / (cond_dim + in_features) ** 0.5
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        t = as_cond(cond, z, self.cond_dim)
        w = self.weight.flatten(1)  # (C/r, n + C)
        cond_term = t @ w[:, : self.cond_dim].t()  # W1_T T: (B, C/r)
        if self.conv:
            y = torch.nn.functional.conv2d(z, self.weight[:, self.cond_dim :], self.bias)
            return y + cond_term[:, :, None, None]
        return torch.nn.functional.linear(z, w[:, self.cond_dim :], self.bias) + cond_term

    @classmethod
    def from_module(
        cls, src: nn.Module, *, cond_dim: int, channels: int | None = None, init: str = "zeros"
    ) -> CondLinear:
        """Widen a ``Linear`` or 1x1 ``Conv2d`` (groups=1) with ``n`` T-columns.

        ``channels`` (C, the input features of W1), when given, is checked against ``src``.
        """
        check_source(cls, src, (nn.Linear, nn.Conv2d))
        if isinstance(src, nn.Conv2d):
            if src.kernel_size != (1, 1) or src.groups != 1 or src.stride != (1, 1):
                raise ValueError(f"only a 1x1, stride-1, groups=1 Conv2d can be widened, got {src}")
            cin, cout = src.in_channels, src.out_channels
        else:
            cin, cout = src.in_features, src.out_features
        source_channels(cls, channels, known=cin)
        out = cls(
            cin, cout, cond_dim=cond_dim, bias=src.bias is not None, conv=isinstance(src, nn.Conv2d)
        )
        load_layer(out, src, cond_dim=cond_dim, init=init)
        return out.to(device=src.weight.device, dtype=src.weight.dtype)

    def extra_repr(self) -> str:
        return (
            f"cond_dim={self.cond_dim}, in={self.in_features}, out={self.out_features}, "
            f"conv={self.conv}"
        )


class CondEffectiveSE(nn.Module):
    """Effective SE (one C x C map, no reduction) reading ``[T; z]``: ``s = gate(W [T; z])``.

    The twin of timm's ``EffectiveSEModule``; W gains ``n x C`` parameters.

    Args:
        channels: C.
        cond_dim: n.
        add_maxpool: z = (avg + max) / 2.
        gate_layer: the gate (hard-sigmoid in timm).
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        add_maxpool: bool = False,
        gate_layer: type[nn.Module] = nn.Hardsigmoid,
    ):
        super().__init__()
        self.channels = channels
        self.cond_dim = cond_dim_of(cond_dim)
        self.add_maxpool = add_maxpool
        self.fc = nn.Linear(cond_dim + channels, channels)
        self.gate = gate_layer()

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        t = as_cond(cond, x, self.cond_dim)
        z = global_avg_pool(x).flatten(1)
        if self.add_maxpool:
            z = 0.5 * z + 0.5 * x.amax((2, 3))
        return self.gate(self.fc(torch.cat([t, z], dim=1)))[:, :, None, None]

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x * self._scale(x, cond)

    @classmethod
    def from_parts(
        cls,
        *,
        fc: nn.Module,
        gate: nn.Module,
        cond_dim: int,
        add_maxpool: bool,
        init: str = "zeros",
    ) -> CondEffectiveSE:
        """Build from the single map ``fc`` (Linear or 1x1 Conv2d, C -> C) and the gate."""
        c = fc.weight.shape[0]
        out = cls(c, cond_dim=cond_dim, add_maxpool=add_maxpool)
        out.gate = copy.deepcopy(gate)
        load_layer(out.fc, fc, cond_dim=cond_dim, init=init)
        if fc.bias is None:  # our twin always has a bias: a zero one computes the same
            with torch.no_grad():
                out.fc.bias.zero_()
        return out.to(device=fc.weight.device, dtype=fc.weight.dtype)
