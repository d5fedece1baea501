"""Layer 1: plain attention blocks, their result-conditioned twins, and the aux head."""

from condattn.nn.aux_head import AuxHead
from condattn.nn.cbam import Cbam, CondCbam
from condattn.nn.coord_attn import CondCoordAttn, CoordAttn
from condattn.nn.eca import CondEca, Eca
from condattn.nn.squeeze_excite import (
    CondEffectiveSE,
    CondLinear,
    CondSqueezeExcite,
    SqueezeExcite,
)

__all__ = [
    "AuxHead",
    "Cbam",
    "CondCbam",
    "CondCoordAttn",
    "CondEca",
    "CondEffectiveSE",
    "CondLinear",
    "CondSqueezeExcite",
    "CoordAttn",
    "Eca",
    "SqueezeExcite",
]
