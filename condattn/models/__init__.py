"""Model zoo: a small registry, the CIFAR ResNets of the paper, and timm/torchvision by name.

``create_model`` takes a registered name (``"se_resnet50"``), ``"timm:NAME"`` or
``"torchvision:NAME"``; the last two are built by :mod:`condattn.models.external`.
"""

from condattn.models import googlenet as _googlenet  # noqa: F401  (fills the registry)
from condattn.models import resnet as _resnet  # noqa: F401  (fills the registry)
from condattn.models.external import SOURCES, build_external, is_external, list_external_models
from condattn.models.registry import (
    check_model_name,
    check_sizes,
    create_model,
    list_models,
    register_model,
)
from condattn.models.resnet import ATTENTION_KINDS, BasicBlock, Bottleneck, CifarResNet

__all__ = [
    "ATTENTION_KINDS",
    "SOURCES",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "build_external",
    "check_model_name",
    "check_sizes",
    "create_model",
    "is_external",
    "list_external_models",
    "list_models",
    "register_model",
]
