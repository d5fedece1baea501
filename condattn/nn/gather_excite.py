"""The result-conditioned twin of timm's Gather-Excite (Hu et al., 2018)."""

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
    reduced_channels,
    source_channels,
)
from condattn.nn._timm_common import (
    CondConvMlp,
    check_timm_source,
    timm_type,
)

torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["CondGatherExcite"]


class CondGatherExcite(nn.Module):
    """Gather-Excite whose excite step also reads T (Eq. 4 for GE).

    Gather: ``g = gather(U)``, a ``(B, C, h, w)`` descriptor: the global mean (``extent=0``,
    ``h = w = 1``), a strided average pool over ``extent x extent`` cells, optionally mixed
    with the max (``add_maxpool``), or a learned depthwise conv stack (timm's ``extra_params``).

    Excite, with the learned MLP (timm's ``use_mlp=True``): T is concatenated to the gathered
    descriptor before the MLP's first 1x1 conv, broadcast over its ``h x w`` positions:

    ``s = gate(up(W2 act(W1 [T; g])))``; ``out = s * U``,

    where ``up`` is nearest upsampling to ``H x W`` (identity when ``h = w = 1``). W1 gains
    ``n x C/r`` parameters. Without the MLP (the parameter-free GE) there is no learned map to
    widen, so, as in :class:`condattn.nn.CondEca`, a linear map of T is added to the gate's
    pre-activation: ``s = gate(up(g + W_T T))`` with ``W_T`` of shape ``C x n``, no bias
    (``n x C`` parameters).

    Args:
        channels: C.
        cond_dim: n, the length of T.
        extent: 0 for a global gather, else the (even) gather extent.
        use_mlp: whether the excite step has the learned MLP.
        r: reduction ratio of the MLP (hidden width ``C // r``).
        rd_channels: explicit hidden width; overrides ``r``.
        add_maxpool: mix the max into the parameter-free gather: ``(avg + max) / 2``.
        act_layer: the MLP's activation.
        gate_layer: the gate.
        gather: a learned gather module ``(B, C, H, W) -> (B, C, h, w)`` replacing the pooling.
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        extent: int = 0,
        use_mlp: bool = True,
        r: int = 16,
        rd_channels: int | None = None,
        add_maxpool: bool = False,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
        gather: nn.Module | None = None,
    ):
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.cond_dim = cond_dim_of(cond_dim)
        if extent < 0 or extent % 2:
            raise ValueError(f"extent must be 0 (global) or a positive even int, got {extent}")
        self.extent = extent
        self.add_maxpool = add_maxpool
        self.gather = gather
        self.mlp: CondConvMlp | None = None
        self.cond_fc: nn.Linear | None = None
        if use_mlp:
            rd = reduced_channels(channels, r=r, rd_channels=rd_channels)
            self.mlp = CondConvMlp(channels, rd, cond_dim=cond_dim, act_layer=act_layer)
        else:
            self.cond_fc = nn.Linear(cond_dim, channels, bias=False)  # W_T
        self.gate = gate_layer()

    def _gather(self, x: Tensor) -> Tensor:
        """g: ``(B, C, h, w)`` (timm's GatherExcite gather step, verbatim)."""
        if self.gather is not None:
            return self.gather(x)
        if self.extent == 0:
            g = global_avg_pool(x)  # (B, C, 1, 1)
            if self.add_maxpool:
                g = 0.5 * g + 0.5 * x.amax((2, 3), keepdim=True)
            return g
        k, stride = 2 * self.extent - 1, self.extent
        g = F.avg_pool2d(x, kernel_size=k, stride=stride, padding=k // 2, count_include_pad=False)
        if self.add_maxpool:
            g = 0.5 * g + 0.5 * F.max_pool2d(x, kernel_size=k, stride=stride, padding=k // 2)
        return g

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The gate s: ``(B, C, H, W)`` (``(B, C, 1, 1)`` for a global gather)."""
        t = as_cond(cond, x, self.cond_dim)  # (B, n)
        g = self._gather(x)  # (B, C, h, w)
        if self.mlp is not None:
            g = self.mlp(g, t)  # W2 act(W1 [T; g])
        else:
            assert self.cond_fc is not None
            g = g + self.cond_fc(t)[:, :, None, None]  # g + W_T T
        if g.shape[-1] != 1 or g.shape[-2] != 1:
            g = F.interpolate(g, size=x.shape[-2:])  # up: nearest, to (H, W)
        return self.gate(g)

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
    ) -> CondGatherExcite:
        """Build the twin of a timm ``GatherExcite``, copying its weights.

        Args:
            src: the ``GatherExcite``.
            cond_dim: n.
            channels: C, the traced input's channels; checked against the MLP's width when the
                source has one, required when it has none.
            init: ``"zeros"`` (the twin equals ``src`` for any T) or ``"default"`` (the T-columns
                drawn like the widened W1; ``W_T`` like ``nn.Linear``'s default, fan-in n).

        Raises:
            TypeError: if ``src`` is not a ``GatherExcite``, or its ``mlp`` is neither a timm
                ``ConvMlp`` nor ``nn.Identity``.
        """
        check_timm_source(cls, src, "timm.layers.gather_excite", "GatherExcite")
        has_mlp = not isinstance(src.mlp, nn.Identity)
        if has_mlp and not isinstance(src.mlp, timm_type("timm.layers.mlp", "ConvMlp")):
            raise TypeError(
                "GatherExcite.mlp must be timm's ConvMlp (use_mlp=True) or nn.Identity "
                f"(use_mlp=False), got {type(src.mlp).__name__}"
            )
        c = source_channels(cls, channels, known=src.mlp.fc1.in_channels if has_mlp else None)
        out = cls(
            c,
            cond_dim=cond_dim,
            extent=src.extent,
            use_mlp=False,
            add_maxpool=bool(src.add_maxpool),
            gather=copy.deepcopy(src.gather),
        )
        out.gate = copy.deepcopy(src.gate)
        if has_mlp:
            out.cond_fc = None
            out.mlp = CondConvMlp.from_conv_mlp(src.mlp, cond_dim=cond_dim, init=init)
        else:
            assert out.cond_fc is not None
            init_cond_matrix(out.cond_fc.weight, init=init, fan_in=cond_dim)
        p = next(src.parameters(), None)
        return out if p is None else out.to(device=p.device, dtype=p.dtype)
