"""condattn: introduce the result into self-attention."""

from condattn import models, nn
from condattn.losses import DeepSupervisionLoss, LossParts
from condattn.outputs import CondOutput
from condattn.profiling import count_macs, count_params

__version__ = "0.1.0"

__all__ = [
    "CondOutput",
    "DeepSupervisionLoss",
    "LossParts",
    "count_macs",
    "count_params",
    "models",
    "nn",
]
