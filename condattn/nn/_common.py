"""Argument checks, the T-column initialisation, the conditioned 1x1 map and the pooling shared
by the attention blocks (ours and the twins of timm's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INITS = ("zeros", "default")
_HALF = (torch.bfloat16, torch.float16)


def _sum_by_matmul(x: Tensor) -> bool:
    """Whether a mean of ``x`` is better taken as a matrix product.

    On CPU, torch's sum/mean kernels ran many times slower in bf16 and fp16 than in fp32 when
    this was measured; under bf16 autocast that made SE's pool most of SE's cost (the numbers,
    device and version: docs/results.md, "The cost of SE itself").
    oneDNN's matrix product accumulates in fp32 and reads the tensor in its own layout.
    """
    return x.device.type == "cpu" and x.dtype in _HALF and x.dim() == 4


def global_avg_pool(x: Tensor) -> Tensor:
    """The mean over H and W, shaped ``(B, C, 1, 1)``: ``adaptive_avg_pool2d(x, 1)`` (Eq. 1).

    On CPU in bf16/fp16 (see :func:`_sum_by_matmul`) the sum is a matrix product with a
    vector of ones, then divided by ``H * W`` (two roundings to the half type, against one);
    elsewhere it is ``x.mean``.
    """
    if not _sum_by_matmul(x):
        return x.mean((2, 3), keepdim=True)
    b, c, h, w = x.shape
    ones = x.new_ones(h * w, 1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        s = torch.matmul(ones.t(), x.permute(0, 2, 3, 1).reshape(b, h * w, c))  # (B, 1, C)
    else:
        s = torch.matmul(x.reshape(b, c, h * w), ones)  # (B, C, 1)
    return (s / (h * w)).view(b, c, 1, 1)


def channel_mean(x: Tensor) -> Tensor:
    """The mean over C, shaped ``(B, 1, H, W)`` (CBAM's spatial descriptor); as
    :func:`global_avg_pool`, a matrix product on CPU in bf16/fp16."""
    if not _sum_by_matmul(x):
        return x.mean(1, keepdim=True)
    b, c, h, w = x.shape
    ones = x.new_ones(c, 1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        s = torch.matmul(x.permute(0, 2, 3, 1).reshape(b, h * w, c), ones)  # (B, HW, 1)
        return (s / c).view(b, h, w, 1).permute(0, 3, 1, 2)
    s = torch.matmul(ones.t(), x.reshape(b, c, h * w))  # (B, 1, HW)
    return (s / c).view(b, 1, h, w)


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` computed by :func:`global_avg_pool`."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: Tensor) -> Tensor:
        return global_avg_pool(x)


# torch.fx records these as calls instead of tracing their dtype and layout tests.
torch.fx.wrap("global_avg_pool")
torch.fx.wrap("channel_mean")


def check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def reduced_channels(channels: int, *, r: int, rd_channels: int | None, minimum: int = 1) -> int:
    """Hidden width C/r of a squeeze block (integer division, as in the paper's SE-ResNet).

    Raises:
        ValueError: if ``r`` exceeds ``channels`` (C/r would be 0) or a width is not positive.
    """
    check_positive_int("channels", channels)
    if rd_channels is not None:
        return check_positive_int("rd_channels", rd_channels)
    check_positive_int("r", r)
    if r > channels:
        raise ValueError(
            f"reduction ratio r={r} is larger than channels={channels}: the hidden width C/r "
            f"would be 0. Use r <= {channels} or pass rd_channels explicitly."
        )
    return max(channels // r, minimum)


def check_init(init: str) -> str:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init


def check_source(cls: type, src: nn.Module, expected: type | tuple[type, ...]) -> None:
    if not isinstance(src, expected):
        names = (
            expected.__name__
            if isinstance(expected, type)
            else " or ".join(t.__name__ for t in expected)
        )
        raise TypeError(
            f"{cls.__name__}.from_module expects a {names}, got {type(src).__name__}. "
            "Use condattn.get_attention_mapping() to find the twin of a type."
        )


@torch.no_grad()
def init_cond_columns(weight: Tensor, cond_dim: int, init: str) -> None:
    """Initialise the T-columns ``weight[:, :cond_dim]`` of a layer whose input is ``[T; z]``.

    ``"zeros"`` makes the twin compute exactly its source's function. ``"default"`` draws them
    like PyTorch's default Linear/Conv init for the whole layer (fan-in includes T), i.e. what a
    network built from scratch with ``cond_dim`` more inputs to W1 would get.
    """
    init_cond_matrix(weight[:, :cond_dim], init=init, fan_in=weight[0].numel())


def cond_conv1x1(conv: nn.Conv2d, g: Tensor, t: Tensor, cond_dim: int) -> Tensor:
    """``conv([T; g])`` for a 1x1, groups=1 conv whose first ``cond_dim`` inputs read T.

    T is broadcast over the positions of ``g``, so ``W [T; g] + b = W_g g + b + W_T T``: computed
    that way, without a broadcast copy of T. Shapes: g ``(B, C, h, w)``, t ``(B, n)``.
    """
    w = conv.weight  # (out, n + C, 1, 1)
    y = F.conv2d(g, w[:, cond_dim:], conv.bias)  # W_g g + b: (B, out, h, w)
    return y + (t @ w[:, :cond_dim].flatten(1).t())[:, :, None, None]  # + W_T T


@torch.no_grad()
def init_cond_matrix(weight: Tensor, *, init: str, fan_in: int) -> None:
    """Initialise a T-map ``W_T`` kept apart from the layer it extends.

    ``"zeros"``: the twin computes its source's function. ``"default"``: uniform in
    ``+-1/sqrt(fan_in)``, PyTorch's default bound for the layer widened by T (``fan_in``
    counts T and the layer's own inputs), as :func:`init_cond_columns` for T-columns inside a layer.
    """
    check_init(init)
    if init == "zeros":
        weight.zero_()
    else:
        bound = 1.0 / fan_in**0.5
        weight.uniform_(-bound, bound)


@torch.no_grad()
def load_layer(dst: nn.Module, src: nn.Module, *, cond_dim: int = 0, init: str = "zeros") -> None:
    """Copy ``src``'s weight (and bias) into ``dst``, a layer with ``cond_dim`` more inputs.

    The source weight goes into ``dst.weight[:, cond_dim:]`` (1x1 conv kernels and matrices are
    interchangeable); the T-columns ``[:, :cond_dim]`` are set by :func:`init_cond_columns`.
    A bias-free source leaves ``dst``'s bias as it is.
    """
    dst.weight[:, cond_dim:].copy_(src.weight.reshape(dst.weight[:, cond_dim:].shape))
    if cond_dim:
        init_cond_columns(dst.weight, cond_dim, init)
    if src.bias is not None:
        dst.bias.copy_(src.bias)


def source_channels(cls: type, channels: int | None, *, known: int | None) -> int:
    """C for ``cls.from_module``: the ``channels=`` given (by :func:`condattn.convert`, from the
    traced input of the attention) checked against what the source records, or the latter.

    Raises:
        ValueError: if neither is known, or they disagree.
    """
    if channels is None:
        if known is None:
            raise ValueError(f"{cls.__name__}.from_module: pass channels= (the source lacks C)")
        return known
    check_positive_int("channels", channels)
    if known is not None and channels != known:
        raise ValueError(
            f"{cls.__name__}.from_module: channels={channels}, but the source has {known} channels"
        )
    return channels


def cond_dim_of(cond_dim: int) -> int:
    return check_positive_int("cond_dim", cond_dim)


def as_cond(cond: Tensor, x: Tensor, cond_dim: int) -> Tensor:
    """Check and flatten the conditioning input T to ``(B, cond_dim)``."""
    if cond.dim() != 2 or cond.shape[1] != cond_dim or cond.shape[0] != x.shape[0]:
        raise ValueError(
            f"cond (T) must have shape (batch, {cond_dim}) with the batch of x "
            f"({x.shape[0]}), got {tuple(cond.shape)}"
        )
    return cond.to(x.dtype)
