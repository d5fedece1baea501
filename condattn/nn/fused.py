"""A fused Squeeze-and-Excitation gate: pool, MLP and scale with a hand-written backward.

Eager autograd runs the SE block as ~10 kernels, and three of them touch the whole
``(B, C, H, W)`` tensor in the backward pass on top of the forward's two (pool, scale):

- ``MulBackward``: ``g * s`` *and* the temporary ``g * x``, then a reduction over H, W;
- ``MeanBackward``/``AdaptiveAvgPool2dBackward``: the pooled gradient expanded to ``(B, C, H, W)``;
- the accumulation of those two gradients of ``x``.

:func:`se_gate` does the same maths in one ``torch.autograd.Function`` whose backward makes two
passes over the big tensors: ``dL/ds = sum_hw(g * x)`` (a batched dot product, ``bmm``, when
H*W is small) and ``dL/dx = g * s + dL/dz / HW`` in one ``addcmul``. The MLP (``B x C`` sized) is
differentiated by hand: ``s = sigmoid(W2 relu(W1 [T; z] + b1) + b2)`` (paper Eqs. 2 and 5).

:class:`FusedSqueezeExcite` is a drop-in for :class:`~condattn.nn.SqueezeExcite` and
:class:`~condattn.nn.CondSqueezeExcite` (ReLU/Sigmoid, no max-pool branch, no norm) with the
same parameter names, so state dicts load either way; :func:`fuse_squeeze_excite` swaps them in
a model. ``_scale`` is kept (unfused) for the analysis hooks; ``forward`` does not call it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from condattn.nn.squeeze_excite import CondSqueezeExcite, SqueezeExcite

__all__ = ["FusedSqueezeExcite", "fuse_squeeze_excite", "scale_channels", "se_gate"]


# Above this many positions per channel, CPU bmm of (1 x HW) @ (HW x 1) slices is ~10x slower
# than mul + sum (measured at B=32, C=64, HW=1024 on a Xeon with MKL, torch 2.14, 1 thread).
_BMM_MAX_HW = 256


def _sum_hw_product(g: Tensor, x: Tensor) -> Tensor:
    """``(g * x).sum((2, 3))`` as ``(B, C)``; a batched dot product (no ``g * x`` temporary)
    for contiguous inputs with small H*W, where it is faster."""
    b, c = x.shape[:2]
    hw = x.shape[2] * x.shape[3]
    if hw <= _BMM_MAX_HW and g.is_contiguous() and x.is_contiguous():
        return torch.bmm(g.reshape(b * c, 1, hw), x.reshape(b * c, hw, 1)).view(b, c)
    return (g * x).sum((2, 3))


class _ScaleChannels(torch.autograd.Function):
    """``x * s`` for ``s`` shaped ``(B, C, 1, 1)``, backward ``(g * s, sum_hw(g * x))``."""

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor) -> Tensor:
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g: Tensor):
        x, s = ctx.saved_tensors
        gx = g * s if ctx.needs_input_grad[0] else None
        gs = _sum_hw_product(g, x).view_as(s).to(s.dtype) if ctx.needs_input_grad[1] else None
        return gx, gs


def scale_channels(x: Tensor, s: Tensor) -> Tensor:
    """``x * s`` (Eq. 3) whose backward reduces ``g * x`` without a temporary."""
    return _ScaleChannels.apply(x, s)


class _SEGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cond, w1, b1, w2, b2):
        hw = x.shape[2] * x.shape[3]
        z = x.mean((2, 3))  # (B, C), Eq. 1
        zc = z if cond is None else torch.cat([cond.to(z.dtype), z], dim=1)  # [T; z], Eq. 4
        h = torch.nn.functional.linear(zc, w1, b1)  # (B, C/r)
        a = torch.relu(h)
        s = torch.sigmoid(torch.nn.functional.linear(a, w2, b2))  # (B, C), Eq. 2 / 5
        ctx.save_for_backward(x, zc, h, a, s, w1, w2)
        ctx.hw = hw
        ctx.has_cond = cond is not None
        ctx.has_bias = b1 is not None
        return x * s[:, :, None, None]  # Eq. 3 / 6

    @staticmethod
    def backward(ctx, g):
        x, zc, h, a, s, w1, w2 = ctx.saved_tensors
        gs = _sum_hw_product(g, x).to(s.dtype)  # dL/ds: (B, C)
        du = gs * s * (1 - s)  # through the sigmoid
        gw2 = du.t() @ a
        gb2 = du.sum(0) if ctx.has_bias else None
        dh = (du @ w2) * (h > 0)  # through W2 and the ReLU
        gw1 = dh.t() @ zc
        gb1 = dh.sum(0) if ctx.has_bias else None
        dzc = dh @ w1  # (B, n + C)
        n = zc.shape[1] - x.shape[1]
        gcond = dzc[:, :n] if ctx.has_cond and ctx.needs_input_grad[1] else None
        dz = (dzc[:, n:] / ctx.hw).to(g.dtype)[:, :, None, None]
        gx = None
        if ctx.needs_input_grad[0]:
            # dL/dx = g * s + dL/dz / HW: both paths of x in one pass.
            gx = torch.addcmul(dz, g, s.to(g.dtype)[:, :, None, None])
        return gx, gcond, gw1, gb1, gw2, gb2


def se_gate(
    x: Tensor,
    w1: Tensor,
    b1: Tensor | None,
    w2: Tensor,
    b2: Tensor | None,
    cond: Tensor | None = None,
) -> Tensor:
    """``x * sigmoid(W2 relu(W1 [T; avgpool(x)] + b1) + b2)`` with a fused backward.

    Args:
        x: U, ``(B, C, H, W)``.
        w1, b1: W1 ``(C/r, n + C)`` (``n = 0`` without ``cond``) and its bias.
        w2, b2: W2 ``(C, C/r)`` and its bias.
        cond: T, ``(B, n)``, or None for the plain SE.
    """
    if (b1 is None) != (b2 is None):
        raise ValueError("b1 and b2 must both be given or both be None")
    return _SEGate.apply(x, cond, w1, b1, w2, b2)


class FusedSqueezeExcite(nn.Module):
    """SE (or conditioned SE when ``cond_dim > 0``) computed by :func:`se_gate`.

    Same parameters (``fc1``, ``fc2``) and the same function as :class:`SqueezeExcite` /
    :class:`CondSqueezeExcite` with ReLU and Sigmoid; only the backward is fused.

    Args:
        channels: C.
        cond_dim: n (0 for the plain SE, whose forward then takes ``x`` only).
        rd_channels: C/r.
        bias: whether W1 and W2 have biases.
    """

    def __init__(self, channels: int, *, rd_channels: int, cond_dim: int = 0, bias: bool = True):
        super().__init__()
        self.channels = channels
        self.cond_dim = cond_dim
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(cond_dim + channels, rd_channels, bias=bias)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(rd_channels, channels, bias=bias)
        self.gate = nn.Sigmoid()

    def _scale(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The gate s, ``(B, C, 1, 1)``, computed unfused (for the analysis hooks)."""
        z = self.pool(x).flatten(1)
        if self.cond_dim:
            z = torch.cat([cond.flatten(1).to(z.dtype), z], dim=1)
        return self.gate(self.fc2(self.act(self.fc1(z))))[:, :, None, None]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.cond_dim and cond is None:
            raise ValueError("this conditioned SE needs cond (T)")
        c = cond.flatten(1) if self.cond_dim else None
        w = lambda t: None if t is None else t.to(x.dtype)  # noqa: E731  (autocast: one dtype)
        return se_gate(
            x, w(self.fc1.weight), w(self.fc1.bias), w(self.fc2.weight), w(self.fc2.bias), c
        )

    @classmethod
    def from_module(cls, src: nn.Module) -> FusedSqueezeExcite:
        """Build from a :class:`SqueezeExcite` or :class:`CondSqueezeExcite` (weights shared
        by copy). Raises ``TypeError`` for variants the fused kernel does not compute."""
        if not fusable(src):
            raise TypeError(f"cannot fuse {type(src).__name__}: {src}")
        cond_dim = getattr(src, "cond_dim", 0)
        out = cls(
            src.channels,
            rd_channels=src.fc1.out_features,
            cond_dim=cond_dim,
            bias=src.fc1.bias is not None,
        )
        out.fc1 = copy.deepcopy(src.fc1)
        out.fc2 = copy.deepcopy(src.fc2)
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, cond_dim={self.cond_dim}"


def fusable(m: nn.Module) -> bool:
    """Whether ``m`` is an SE that :class:`FusedSqueezeExcite` computes exactly."""
    if type(m) is SqueezeExcite:
        pass
    elif type(m) is CondSqueezeExcite:
        if m.add_maxpool or not isinstance(m.norm, nn.Identity):
            return False
    else:
        return False
    return (
        type(m.act) is nn.ReLU
        and type(m.gate) is nn.Sigmoid
        and isinstance(m.fc1, nn.Linear)
        and isinstance(m.fc2, nn.Linear)
    )


def fuse_squeeze_excite(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every fusable SE block of ``model`` by a :class:`FusedSqueezeExcite`.

    Works on plain models and on ``condattn.convert`` outputs (the graph calls modules by name).
    Returns the model (a deep copy unless ``inplace``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    targets = [name for name, m in model.named_modules() if name and fusable(m)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FusedSqueezeExcite.from_module(getattr(parent, child)))
    return model
