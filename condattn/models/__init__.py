"""Model zoo: a small registry and the CIFAR ResNets of the paper."""

from condattn.models import googlenet as _googlenet  # noqa: F401  (fills the registry)
from condattn.models import resnet as _resnet  # noqa: F401  (fills the registry)
from condattn.models.registry import create_model, list_models, register_model
from condattn.models.resnet import ATTENTION_KINDS, BasicBlock, Bottleneck, CifarResNet

__all__ = [
    "ATTENTION_KINDS",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "create_model",
    "list_models",
    "register_model",
]
