"""The output type of every converted model."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class CondOutput(NamedTuple):
    """What a converted model returns, in train AND eval mode.

    GoogLeNet returns a different type in train and eval; we do not, because the conditioned
    attention needs the aux logits T at inference too, and one type keeps callers simple.

    Attributes:
        logits: the main classifier's logits, ``(B, n)``.
        aux_logits: one ``(B, n)`` tensor per aux head (or auxiliary model), in network order.
    """

    logits: Tensor
    aux_logits: tuple[Tensor, ...]
