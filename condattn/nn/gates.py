"""Gates for attention blocks inserted into a trained network (:func:`condattn.add_attention`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ScaledSigmoid"]


class ScaledSigmoid(nn.Module):
    """``scale * sigmoid(x)``: with ``scale=2`` the gate is exactly 1 where its input is 0.

    An attention block whose last layer is zero (weight and bias) and whose gate is this one
    multiplies its input by 1: it computes the identity, so inserting it keeps a network's
    function (NFNet-style ``2 * sigmoid``). The gradient still reaches the last layer
    (``d gate / d x = scale / 4 = 0.5`` at 0), so the block learns from there.

    Args:
        scale: the gate's maximum (2: the gate is 1 at 0, and in (0, 2)).
    """

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"
