"""Hand-written eager SE-R-ResNet: the oracle for ``condattn.convert``.

Written from the paper alone (sections 2-3), independent of condattn's converter and blocks:
SE-ResNet (CIFAR layout, r=8) with GoogLeNet aux heads after layer2 and layer3. Every SE block of
layer3 reads ``z' = [T1; z]`` and every SE block of layer4 reads ``z' = [T2; z]`` (Eq. 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RefSE(nn.Module):
    def __init__(self, channels: int, r: int, cond_dim: int = 0):
        super().__init__()
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.w1 = nn.Linear(cond_dim + channels, channels // r)
        self.w2 = nn.Linear(channels // r, channels)

    def forward(self, u: Tensor, t: Tensor | None = None) -> Tensor:
        z = self.squeeze(u).flatten(1)  # Eq. 1
        if t is not None:
            z = torch.cat([t, z], dim=1)  # Eq. 4: z' = [T; z]
        s = torch.sigmoid(self.w2(F.relu(self.w1(z))))  # Eqs. 2 / 5
        return u * s[:, :, None, None]  # Eqs. 3 / 6


class RefBlock(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool, r: int, cond_dim: int):
        super().__init__()
        e = 4 if bottleneck else 1
        cout = width * e
        if bottleneck:
            convs = [(cin, width, 1, 1), (width, width, 3, stride), (width, cout, 1, 1)]
        else:
            convs = [(cin, width, 3, stride), (width, cout, 3, 1)]
        layers: list[nn.Module] = []
        for a, b, k, s in convs:
            layers += [nn.Conv2d(a, b, k, stride=s, padding=k // 2), nn.BatchNorm2d(b), nn.ReLU()]
        self.branch = nn.Sequential(*layers)
        self.se = RefSE(cout, r, cond_dim)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor, t: Tensor | None) -> Tensor:
        return F.relu(self.se(self.branch(x), t) + self.short(x))


class RefAux(nn.Module):
    """torchvision InceptionAux: pool 4x4, 1x1 conv 128 (no bias), BN(1e-3), fc 2048-1024-n."""

    def __init__(self, cin: int, n: int, dropout: float = 0.7):
        super().__init__()
        self.conv = nn.Conv2d(cin, 128, 1, bias=False)
        self.bn = nn.BatchNorm2d(128, eps=1e-3)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, n)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(F.adaptive_avg_pool2d(x, 4))))
        return self.fc2(self.dropout(F.relu(self.fc1(x.flatten(1)))))


class RefSERResNet(nn.Module):
    """SE-R-ResNet of the paper (Fig. 2 right), with ``conditioned=False`` giving SE-A."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        bottleneck: bool,
        num_classes: int = 100,
        r: int = 8,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        conditioned: bool = True,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        e = 4 if bottleneck else 1
        cin = widths[0]
        stages = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            cond = num_classes if (conditioned and i >= 2) else 0
            blocks = []
            for j in range(n):
                blocks.append(RefBlock(cin, w, 2 if i > 0 and j == 0 else 1, bottleneck, r, cond))
                cin = w * e
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.aux1 = RefAux(widths[1] * e, num_classes)
        self.aux2 = RefAux(widths[2] * e, num_classes)
        self.fc = nn.Linear(cin, num_classes)
        self.conditioned = conditioned

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x = self.stem(x)
        for blk in self.stages[0]:
            x = blk(x, None)
        for blk in self.stages[1]:
            x = blk(x, None)
        t1 = self.aux1(x)
        for blk in self.stages[2]:
            x = blk(x, t1 if self.conditioned else None)
        t2 = self.aux2(x)
        for blk in self.stages[3]:
            x = blk(x, t2 if self.conditioned else None)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return logits, (t1, t2)


REF_LAYERS = {34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True)}


def ref_se_r_resnet(depth: int, **kw) -> RefSERResNet:
    layers, bottleneck = REF_LAYERS[depth]
    return RefSERResNet(layers, bottleneck, **kw)
