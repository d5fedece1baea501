"""Layer 1: plain attention blocks, their result-conditioned twins, and the aux head."""

from condattn.nn.aux_head import AuxHead
from condattn.nn.cbam import Cbam, CondCbam
from condattn.nn.coord_attn import CondCoordAttn, CoordAttn
from condattn.nn.eca import CondEca, Eca
from condattn.nn.eca_extra import CondCeca
from condattn.nn.film import CondFilm, FilmGate
from condattn.nn.gates import ScaledSigmoid
from condattn.nn.gather_excite import CondGatherExcite
from condattn.nn.global_context import CondGlobalContext
from condattn.nn.light_cbam import CondLightCbam
from condattn.nn.selective_kernel import CondSelectiveKernel, CondSelectiveKernelAttn
from condattn.nn.split_attn import CondSplitAttn
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
    "CondCeca",
    "CondCoordAttn",
    "CondEca",
    "CondEffectiveSE",
    "CondFilm",
    "CondGatherExcite",
    "CondGlobalContext",
    "CondLightCbam",
    "CondLinear",
    "CondSelectiveKernel",
    "CondSelectiveKernelAttn",
    "CondSplitAttn",
    "CondSqueezeExcite",
    "CoordAttn",
    "Eca",
    "FilmGate",
    "ScaledSigmoid",
    "SqueezeExcite",
]
