"""GoogLeNet's auxiliary classifier (InceptionAux), the source of the early prediction T."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condattn.nn._common import check_positive_int

__all__ = ["AuxHead"]


class AuxHead(nn.Module):
    """Auxiliary classifier with torchvision's ``InceptionAux`` layout (paper section 3.1).

    adaptive avg-pool to ``pool_size`` -> 1x1 conv to ``width`` (no bias) -> BN(eps=1e-3) -> ReLU
    -> flatten -> fc to ``hidden`` -> ReLU -> dropout -> fc to ``num_classes``.

    The pool is functional, as in torchvision, so thop-style counters give it no MACs; this is
    what the paper's Table 2 counted.

    Args:
        in_channels: channels of the stage output it reads.
        num_classes: n, the length of T.
        dropout: the dropout rate between the two fc layers (paper: 0.7, Table 5).
        pool_size: the side of the pooled map (4 in GoogLeNet).
        width: channels of the 1x1 conv (128 in GoogLeNet).
        hidden: width of the first fc (1024 in GoogLeNet).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        dropout: float = 0.7,
        pool_size: int = 4,
        width: int = 128,
        hidden: int = 1024,
    ):
        super().__init__()
        for name, v in [
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("pool_size", pool_size),
            ("width", width),
            ("hidden", hidden),
        ]:
            check_positive_int(name, v)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.pool_size = pool_size
        self.conv = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width, eps=1e-3)
        self.fc1 = nn.Linear(width * pool_size * pool_size, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The logits; with ``features=True``, ``(logits, h)`` where ``h`` is the penultimate
        activation that ``fc2`` reads (``cond="features"``, condattn's information control)."""
        x = F.adaptive_avg_pool2d(x, self.pool_size)  # (B, C, 4, 4)
        x = F.relu(self.bn(self.conv(x)))  # (B, 128, 4, 4)
        x = torch.flatten(x, 1)  # (B, 2048)
        x = F.relu(self.fc1(x))  # (B, 1024)
        h = self.dropout(x)  # (B, 1024)
        logits = self.fc2(h)  # (B, n)
        return (logits, h) if features else logits
