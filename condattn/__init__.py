"""condattn: introduce the result into self-attention.

>>> model = condattn.models.create_model("se_resnet50", num_classes=100)
>>> se_r = condattn.convert(model, aux_at=["layer2", "layer3"])
>>> out = se_r(x)  # CondOutput(logits, aux_logits=(t1, t2)) in train and eval
"""

# First, before anything loads torch: the `condattn` command's OpenMP settings.
from condattn import _omp_env  # noqa: F401  # isort: skip
from condattn import models, nn
from condattn.losses import DeepSupervisionLoss, LossParts
from condattn.outputs import CondOutput
from condattn.profiling import count_macs, count_params
from condattn.transform.add_attention import add_attention, get_added
from condattn.transform.convert import (
    ConversionError,
    ConvertConfig,
    Placement,
    convert,
    get_config,
)
from condattn.transform.discovery import auto_aux_at, list_attention, list_stages
from condattn.transform.dropin import logits_only
from condattn.transform.mappings import (
    get_attention_mapping,
    register_attention,
    unregister_attention,
)
from condattn.transform.serialization import LoadResult, load, load_base_state_dict, save

__version__ = "0.2.0"

__all__ = [
    "CondOutput",
    "ConversionError",
    "ConvertConfig",
    "DeepSupervisionLoss",
    "LoadResult",
    "LossParts",
    "Placement",
    "add_attention",
    "auto_aux_at",
    "convert",
    "count_macs",
    "count_params",
    "get_added",
    "get_attention_mapping",
    "get_config",
    "list_attention",
    "list_stages",
    "load",
    "load_base_state_dict",
    "logits_only",
    "models",
    "nn",
    "register_attention",
    "save",
    "unregister_attention",
]
