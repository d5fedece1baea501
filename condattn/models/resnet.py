"""CIFAR ResNets with pluggable attention: the paper's SE-ResNet and its CBAM/CA/ECA cousins.

The layout reproduces weiaicunzai/pytorch-cifar100's SE-ResNet, which matches the paper's
Tables 1 and 2 exactly at r=8:

- stem: 3x3 stride-1 conv (with bias), BN, ReLU; no max-pool;
- every conv has a bias; each residual branch ends in BN then ReLU;
- the attention block scales the branch and ``out = relu(attn(branch) + shortcut)``;
- head: global average pool (functional) and ``fc``.

``attention="none"`` keeps the same layout without the attention block, so SE-ResNet vs ResNet
differs in exactly the attention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condattn.models.registry import check_sizes, register_model
from condattn.nn import Cbam, CoordAttn, Eca, SqueezeExcite

__all__ = ["ATTENTION_KINDS", "BasicBlock", "Bottleneck", "CifarResNet"]


def _make_attention(kind: str, channels: int, r: int) -> nn.Module:
    builders: dict[str, Callable[[], nn.Module]] = {
        "none": nn.Identity,
        "se": partial(SqueezeExcite, channels, r=r),
        "cbam": partial(Cbam, channels, r=r),
        "coord": partial(CoordAttn, channels, r=r),
        "eca": partial(Eca, channels),
    }
    return builders[kind]()


ATTENTION_KINDS = ("none", "se", "cbam", "coord", "eca")


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class _Block(nn.Module):
    expansion = 1

    def __init__(
        self, residual: list[nn.Module], cin: int, cout: int, stride: int, attn: nn.Module
    ):
        super().__init__()
        self.residual = nn.Sequential(*residual)
        self.attn = attn
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.attn(self.residual(x)) + self.shortcut(x))


class BasicBlock(_Block):
    """Two 3x3 convs; the branch ends in BN then ReLU."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, *, attention: str, r: int):
        cout = width * self.expansion
        residual = _conv_bn_relu(cin, width, 3, stride) + _conv_bn_relu(width, cout, 3)
        super().__init__(residual, cin, cout, stride, _make_attention(attention, cout, r))


class Bottleneck(_Block):
    """1x1, 3x3 (strided), 1x1 to 4x width; the branch ends in BN then ReLU."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, attention: str, r: int):
        cout = width * self.expansion
        residual = (
            _conv_bn_relu(cin, width, 1)
            + _conv_bn_relu(width, width, 3, stride)
            + _conv_bn_relu(width, cout, 1)
        )
        super().__init__(residual, cin, cout, stride, _make_attention(attention, cout, r))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with stages ``layer1``..``layer4`` and a pluggable attention.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        num_classes: n.
        attention: one of :data:`ATTENTION_KINDS`.
        r: reduction ratio of the attention (paper: 8). ECA has no reduction and ignores it.
        widths: base width of each stage (64, 128, 256, 512 in the paper); tests use tiny ones.
        in_channels: input image channels.

    Raises:
        ValueError: an unknown attention kind, a stage count other than 4, or a size
            (``num_classes``, ``r``, ``layers``, ``widths``, ``in_channels``) that is not positive.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 100,
        attention: str = "se",
        r: int = 8,
        widths: Sequence[int] = (64, 128, 256, 512),
        in_channels: int = 3,
    ):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(
                f"unknown attention {attention!r}; valid kinds: {', '.join(ATTENTION_KINDS)}"
            )
        check_sizes(
            num_classes=num_classes,
            r=r,
            layers=tuple(layers),
            widths=tuple(widths),
            in_channels=in_channels,
        )
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(
                f"layers and widths need 4 entries (one per stage), got {layers}, {widths}"
            )
        self.attention = attention
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, widths[0], 3))
        cin = widths[0]
        for i, (n, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, width, stride, attention=attention, r=r))
                cin = width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # (B, 64, 32, 32)
        x = self.layer1(x)  # (B, 64e, 32, 32)
        x = self.layer2(x)  # (B, 128e, 16, 16)
        x = self.layer3(x)  # (B, 256e, 8, 8)
        x = self.layer4(x)  # (B, 512e, 4, 4)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 512e)
        return self.fc(x)  # (B, n)


_DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_PREFIX = {"none": "", "se": "se_", "cbam": "cbam_", "coord": "ca_", "eca": "eca_"}


def _register_all() -> None:
    for kind, prefix in _PREFIX.items():
        for depth, (block, layers) in _DEPTHS.items():
            name = f"{prefix}resnet{depth}"

            def builder(*, _b=block, _l=layers, _k=kind, **kw) -> CifarResNet:
                return CifarResNet(_b, _l, attention=_k, **kw)

            builder.__name__ = name
            builder.__doc__ = f"CIFAR {name} ({kind} attention); keyword args go to CifarResNet."
            register_model(name)(builder)


_register_all()
