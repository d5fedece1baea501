"""Deep-supervision loss: main + sum_i lossW_i * aux_i (paper section 3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from condattn.outputs import CondOutput


class LossParts(NamedTuple):
    """The total loss and its parts (unweighted), for logging."""

    total: Tensor
    main: Tensor
    aux: tuple[Tensor, ...]


class DeepSupervisionLoss(nn.Module):
    """``CE(logits, y) + sum_i w_i * CE(aux_i, y)``.

    Args:
        aux_weights: lossW1, lossW2, ... one per aux output (paper Tables 7-9).
        label_smoothing: passed to cross-entropy; the paper uses 0.
    """

    def __init__(self, aux_weights: Sequence[float] = (0.3, 0.3), *, label_smoothing: float = 0.0):
        super().__init__()
        weights = tuple(float(w) for w in aux_weights)
        if any(w < 0 for w in weights):
            raise ValueError(f"aux_weights must be >= 0, got {weights}")
        self.aux_weights = weights
        self.label_smoothing = float(label_smoothing)

    def forward(self, output: CondOutput | Tensor, target: Tensor) -> LossParts:
        if isinstance(output, Tensor):  # a plain model: no aux heads
            output = CondOutput(output, ())
        logits, aux_logits = output
        if len(aux_logits) != len(self.aux_weights):
            raise ValueError(
                f"the model returned {len(aux_logits)} aux outputs but aux_weights has "
                f"{len(self.aux_weights)} entries {self.aux_weights}; give one weight per aux head"
            )
        main = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        aux = tuple(
            F.cross_entropy(a, target, label_smoothing=self.label_smoothing) for a in aux_logits
        )
        total = main
        for w, a in zip(self.aux_weights, aux):
            total = total + w * a
        return LossParts(total, main.detach(), tuple(a.detach() for a in aux))

    def extra_repr(self) -> str:
        return f"aux_weights={self.aux_weights}"


__all__ = ["DeepSupervisionLoss", "LossParts"]
