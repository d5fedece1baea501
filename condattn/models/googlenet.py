"""GoogLeNet adapted to 32x32 inputs: the auxiliary model of the paper's section 5.6."""

from __future__ import annotations

from torch import nn
from torchvision.models.googlenet import BasicConv2d, GoogLeNet

from condattn.models.registry import check_sizes, register_model

__all__ = ["googlenet_cifar"]


@register_model()
def googlenet_cifar(*, num_classes: int = 100, dropout: float = 0.2) -> nn.Module:
    """torchvision's GoogLeNet for CIFAR: a 3x3 stride-1 stem and no stem max-pools.

    With 32x32 inputs the inception blocks then see 32/16/8 pixels instead of 28/14/7 at 224.
    Built without its own aux classifiers (``aux_logits=False``), so it returns one tensor of
    logits in train and eval mode, as ``convert(..., aux_model=...)`` needs.
    """
    check_sizes(num_classes=num_classes)
    net = GoogLeNet(
        num_classes=num_classes,
        aux_logits=False,
        transform_input=False,
        init_weights=True,
        dropout=dropout,
    )
    net.conv1 = BasicConv2d(3, 64, kernel_size=3, stride=1, padding=1)
    net.maxpool1 = nn.Identity()
    net.maxpool2 = nn.Identity()
    return net
