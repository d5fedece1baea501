"""The result-conditioned twin of timm's Global Context block (GCNet, Cao et al., 2019)."""

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
    reduced_channels,
    source_channels,
)
from condattn.nn._timm_common import CondConvMlp, check_timm_source, timm_type

torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["CondGlobalContext"]


class CondGlobalContext(nn.Module):
    """Global Context whose transform MLPs also read T (Eq. 4 for GCNet).

    Context: ``k = sum_j softmax_j(W_k U)_j U_j`` (attention pooling with a 1x1 conv
    ``conv_attn``; with ``use_attn=False`` the mean), a ``(B, C, 1, 1)`` descriptor. T is
    concatenated to it before the first 1x1 conv of each transform, which then reads ``[T; k]``:

    - ``fuse_scale``: ``s = gate(W2s act(LN(W1s [T; k])))``, ``U <- s * U``;
    - ``fuse_add``: ``a = W2a act(LN(W1a [T; k]))``, ``out = U + a`` (after the scale, if both).

    Each W1 gains ``n x C/r`` parameters. ``_scale`` computes the gate of the ``fuse_scale``
    branch (the add branch is not a gate).

    Args:
        channels: C.
        cond_dim: n, the length of T.
        use_attn: attention pooling (else the mean).
        fuse_add: the additive transform.
        fuse_scale: the multiplicative (gated) transform.
        r: reduction ratio of the transforms (hidden width ``C // r``).
        rd_channels: explicit hidden width; overrides ``r``.
        act_layer: the transforms' activation.
        gate_layer: the gate.
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        use_attn: bool = True,
        fuse_add: bool = False,
        fuse_scale: bool = True,
        r: int = 8,
        rd_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        if not (fuse_add or fuse_scale):
            raise ValueError("at least one of fuse_add and fuse_scale must be True: T needs a map")
        self.channels = check_positive_int("channels", channels)
        self.cond_dim = cond_dim_of(cond_dim)
        rd = reduced_channels(channels, r=r, rd_channels=rd_channels)
        self.conv_attn = nn.Conv2d(channels, 1, 1) if use_attn else None  # W_k

        def mlp() -> CondConvMlp:
            # GroupNorm(1, .) on the (B, C/r, 1, 1) context is timm's LayerNorm2d over channels.
            norm = nn.GroupNorm(1, rd, eps=1e-6)
            return CondConvMlp(channels, rd, cond_dim=cond_dim, act_layer=act_layer, norm=norm)

        self.mlp_add = mlp() if fuse_add else None
        self.mlp_scale = mlp() if fuse_scale else None
        self.gate = gate_layer()

    def _context(self, x: Tensor) -> Tensor:
        """k: ``(B, C, 1, 1)`` (timm's GlobalContext context step, verbatim)."""
        b, c, h, w = x.shape
        if self.conv_attn is None:
            return global_avg_pool(x)
        attn = self.conv_attn(x).reshape(b, 1, h * w)  # (B, 1, HW)
        attn = F.softmax(attn, dim=-1).unsqueeze(3)  # (B, 1, HW, 1)
        context = x.reshape(b, c, h * w).unsqueeze(1) @ attn  # (B, 1, C, 1)
        return context.view(b, c, 1, 1)

    def _scale(self, x: Tensor, cond: Tensor, *, context: Tensor | None = None) -> Tensor:
        """The gate s of the ``fuse_scale`` branch: ``(B, C, 1, 1)``.

        Args:
            x: U.
            cond: T.
            context: k, when the caller has it already (else computed from ``x``).
        """
        if self.mlp_scale is None:
            raise RuntimeError("this CondGlobalContext has no fuse_scale branch, so no gate")
        t = as_cond(cond, x, self.cond_dim)
        k = self._context(x) if context is None else context
        return self.gate(self.mlp_scale(k, t))  # gate(W2s act(LN(W1s [T; k])))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        t = as_cond(cond, x, self.cond_dim)
        k = self._context(x)
        out = x
        if self.mlp_scale is not None:
            out = x * self._scale(x, t, context=k)
        if self.mlp_add is not None:
            out = out + self.mlp_add(k, t)  # U + W2a act(LN(W1a [T; k]))
        return out

    @classmethod
    def from_module(
        cls,
        src: nn.Module,
        *,
        cond_dim: int,
        channels: int | None = None,
        init: str = "zeros",
    ) -> CondGlobalContext:
        """Build the twin of a timm ``GlobalContext``, copying its weights.

        Args:
            src: the ``GlobalContext``.
            cond_dim: n.
            channels: C, the traced input's channels (checked against the source).
            init: ``"zeros"`` (the twin equals ``src`` for any T) or ``"default"``.

        Raises:
            TypeError: if ``src`` is not a ``GlobalContext``, has neither ``fuse_scale`` nor
                ``fuse_add`` (no learned map for T), or a transform is not a timm ``ConvMlp``.
        """
        check_timm_source(cls, src, "timm.layers.global_context", "GlobalContext")
        mlps = {"fuse_add": src.mlp_add, "fuse_scale": src.mlp_scale}
        if all(m is None for m in mlps.values()):
            raise TypeError(
                "GlobalContext(fuse_add=False, fuse_scale=False) has no transform MLP that T could "
                "join; it is not supported"
            )
        conv_mlp = timm_type("timm.layers.mlp", "ConvMlp")
        for opt, m in mlps.items():
            if m is not None and not isinstance(m, conv_mlp):
                raise TypeError(f"GlobalContext {opt} must use timm's ConvMlp, got {type(m)}")
        first = src.mlp_scale if src.mlp_scale is not None else src.mlp_add
        c = source_channels(cls, channels, known=first.fc1.in_channels)
        out = cls(
            c,
            cond_dim=cond_dim,
            use_attn=src.conv_attn is not None,
            fuse_add=src.mlp_add is not None,
            fuse_scale=src.mlp_scale is not None,
            rd_channels=first.fc1.out_channels,
        )
        out.conv_attn = copy.deepcopy(src.conv_attn)
        out.gate = copy.deepcopy(src.gate)
        for name in ("mlp_add", "mlp_scale"):
            m = getattr(src, name)
            if m is not None:
                setattr(out, name, CondConvMlp.from_conv_mlp(m, cond_dim=cond_dim, init=init))
        w = first.fc1.weight
        return out.to(device=w.device, dtype=w.dtype)
