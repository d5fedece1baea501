"""Argument checks and the T-column initialisation shared by every conditioned block."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

INITS = ("zeros", "default")


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
            "Use condattn.mappings.get_attention_mapping() to find the twin of a type."
        )


@torch.no_grad()
def init_cond_columns(weight: Tensor, cond_dim: int, init: str) -> None:
    """Initialise the T-columns ``weight[:, :cond_dim]`` of a layer whose input is ``[T; z]``.

    ``"zeros"`` makes the twin compute exactly its source's function. ``"default"`` draws them
    like PyTorch's default Linear/Conv init for the whole layer (fan-in includes T), i.e. what a
    network built from scratch with ``cond_dim`` more inputs to W1 would get.
    """
    check_init(init)
    cols = weight[:, :cond_dim]
    if init == "zeros":
        cols.zero_()
    else:
        fan_in = weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        cols.uniform_(-bound, bound)


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
