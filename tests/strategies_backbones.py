"""Hypothesis strategies for ``condattn.convert``: random tiny backbones and where to put heads.

Like ``strategies.py``, these draw configs, never tensors. :func:`build_backbone` turns a drawn
:class:`BackboneConfig` into a model; tests seed torch from ``config.seed`` first, so every example
replays exactly while hypothesis shrinks it.

A backbone is ``stem -> stage0 -> ... -> stage{k-1} -> global pool -> fc``. Each stage is an
``nn.Sequential`` of residual blocks; stages after the first halve the resolution. Every block
scales its residual branch with an attention of the drawn kind, either an ``condattn.nn`` module
(``se``, ``cbam``, ``coord``, ``eca``) or an SE written inline in ``forward`` (``inline_se``:
pool, W1, ReLU, W2, sigmoid, multiply, with W1/W2 as ``Linear`` or 1x1 ``Conv2d``).

The expected effect of a conversion is computed here in closed form, independently of the
library: which attention each head feeds (:func:`expected_fed`) and the parameters it adds
(:func:`expected_param_delta`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor, nn

from condattn.nn import Cbam, CoordAttn, Eca, SqueezeExcite

__all__ = [
    "BACKBONE_KINDS",
    "BackboneConfig",
    "ToyBackbone",
    "aux_head_params",
    "backbone_configs",
    "build_backbone",
    "expected_auto_aux_at",
    "expected_fed",
    "expected_param_delta",
    "hidden_width",
]

#: Attention kinds of the toy backbones: the four module blocks and an inline SE.
BACKBONE_KINDS: tuple[str, ...] = ("se", "cbam", "coord", "eca", "inline_se")
#: Small aux heads (GoogLeNet's 128/1024 would dwarf a width-8 backbone and slow every example).
AUX_HEAD = {"pool_size": 2, "width": 8, "hidden": 16}
#: The input side. Four stages take 32 -> 32, 16, 8, 4 pixels.
IMAGE_SIZE = 32


@dataclass(frozen=True)
class BackboneConfig:
    """A tiny residual CNN and the heads to convert it with.

    Attributes:
        widths: channels of each stage (2 to 4 stages).
        blocks: residual blocks per stage.
        block: ``"basic"`` (two 3x3 convs) or ``"bottleneck"`` (1x1 down, 3x3, 1x1 up).
        kind: one of :data:`BACKBONE_KINDS`.
        r: reduction ratio of the attention (hidden width: see :func:`hidden_width`).
        inline_conv: inline SE only: W1/W2 are 1x1 convs on ``(B, C, 1, 1)`` instead of Linear.
        heads: the ``aux_at`` names, in network order (``"stem"`` or ``"stage{i}"``).
        num_classes: n.
        batch: B of the test input.
        seed: for ``torch.manual_seed``.
    """

    widths: tuple[int, ...]
    blocks: int
    block: str
    kind: str
    r: int
    inline_conv: bool
    heads: tuple[str, ...]
    num_classes: int
    batch: int
    seed: int

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, IMAGE_SIZE, IMAGE_SIZE)


# --- the model --------------------------------------------------------------------------------


class InlineSE(nn.Module):
    """An SE without an SE module: the ops are in ``forward``, as many codebases write it.

    ``convert`` finds it by pattern (``condattn.transform.fxutils.find_inline_se``); its W1 is
    ``fc1``.
    """

    def __init__(self, channels: int, hidden: int, *, conv: bool):
        super().__init__()
        self.conv = conv
        if conv:
            self.fc1 = nn.Conv2d(channels, hidden, 1)
            self.fc2 = nn.Conv2d(hidden, channels, 1)
        else:
            self.fc1 = nn.Linear(channels, hidden)
            self.fc2 = nn.Linear(hidden, channels)

    def forward(self, u: Tensor) -> Tensor:
        if self.conv:
            z = u.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(z))))  # (B, C, 1, 1)
        else:
            z = F.adaptive_avg_pool2d(u, 1).flatten(1)  # (B, C)
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(z))))  # (B, C)
            s = s.view(s.shape[0], -1, 1, 1)
        return u * s


def _attention(kind: str, channels: int, r: int, inline_conv: bool) -> nn.Module:
    if kind == "se":
        return SqueezeExcite(channels, r=r)
    if kind == "cbam":
        return Cbam(channels, r=r)
    if kind == "coord":
        return CoordAttn(channels, r=r)
    if kind == "eca":
        return Eca(channels)
    if kind == "inline_se":
        return InlineSE(channels, hidden_width(kind, channels, r), conv=inline_conv)
    raise ValueError(f"unknown kind {kind!r}")


class ToyBlock(nn.Module):
    """``relu(attn(branch(x)) + shortcut(x))`` with a basic or bottleneck-ish branch."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: BackboneConfig):
        super().__init__()
        if cfg.block == "basic":
            layers = [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                      nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)]  # fmt: skip
        else:
            mid = max(cout // 2, 1)
            layers = [nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
                      nn.Conv2d(mid, mid, 3, stride, 1), nn.BatchNorm2d(mid), nn.ReLU(),
                      nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout)]  # fmt: skip
        self.branch = nn.Sequential(*layers)
        self.attn = _attention(cfg.kind, cout, cfg.r, cfg.inline_conv)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.attn(self.branch(x)) + self.shortcut(x))


class ToyBackbone(nn.Module):
    """``stem -> stage0 .. stage{k-1} -> pool -> fc``; returns logits ``(B, n)``."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        cin = cfg.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, 1, 1), nn.BatchNorm2d(cin), nn.ReLU())
        self.stages = [f"stage{i}" for i in range(len(cfg.widths))]
        for i, w in enumerate(cfg.widths):
            blocks = [ToyBlock(cin if j == 0 else w, w, 2 if i and not j else 1, cfg)
                      for j in range(cfg.blocks)]  # fmt: skip
            self.add_module(f"stage{i}", nn.Sequential(*blocks))
            cin = w
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_backbone(cfg: BackboneConfig, *, seed: int | None = None) -> ToyBackbone:
    """The model of ``cfg``, its weights drawn after ``torch.manual_seed(seed or cfg.seed)``."""
    torch.manual_seed(cfg.seed if seed is None else seed)
    return ToyBackbone(cfg)


# --- closed forms -------------------------------------------------------------------------------


def hidden_width(kind: str, channels: int, r: int) -> int:
    """The width of the learned map that T is concatenated into (so T adds ``n x this``).

    SE / CBAM / inline SE: ``C // r``; coordinate attention: ``max(8, C // r)``; ECA: ``C``
    (its ``W_T`` maps T straight to the C gate logits).
    """
    if kind in ("se", "cbam", "inline_se"):
        return max(channels // r, 1)
    if kind == "coord":
        return max(8, channels // r)
    if kind == "eca":
        return channels
    raise ValueError(f"unknown kind {kind!r}")


def aux_head_params(in_channels: int, n: int, *, pool_size: int, width: int, hidden: int) -> int:
    """Parameters of an ``AuxHead`` (InceptionAux): 1x1 conv (no bias), BN, fc1, fc2."""
    conv = in_channels * width
    bn = 2 * width
    fc1 = width * pool_size * pool_size * hidden + hidden
    fc2 = hidden * n + n
    return conv + bn + fc1 + fc2


def _position(name: str) -> int:
    return -1 if name == "stem" else int(name.removeprefix("stage"))


def _attention_names(cfg: BackboneConfig, stage: int) -> list[str]:
    leaf = "attn.fc1" if cfg.kind == "inline_se" else "attn"
    return [f"stage{stage}.{j}.{leaf}" for j in range(cfg.blocks)]


def expected_fed(cfg: BackboneConfig) -> dict[str, tuple[str, ...]]:
    """The paper's routing: each attention is fed by the last head before it."""
    fed: dict[str, list[str]] = {h: [] for h in cfg.heads}
    for stage in range(len(cfg.widths)):
        before = [h for h in cfg.heads if _position(h) < stage]
        if before:
            fed[before[-1]] += _attention_names(cfg, stage)
    return {h: tuple(v) for h, v in fed.items()}


def expected_auto_aux_at(cfg: BackboneConfig) -> tuple[str, ...]:
    """``aux_at="auto"`` on a toy backbone, by hand.

    The stem and ``stage0`` keep the input size (one stage, ending at ``stage0``); every later
    stage halves it. So the k stages end at ``stage0`` .. ``stage{k-1}``, the rule's preferred
    heads are the ends of stages k-2 and k-1 (``stage{k-3}``, ``stage{k-2}``), and as every block
    has attention, each of them conditions something and is kept.
    """
    k = len(cfg.widths)
    return tuple(f"stage{i}" for i in range(max(k - 3, 0), k - 1))


def expected_param_delta(cfg: BackboneConfig, *, conditioned: bool = True) -> int:
    """Parameters that ``convert(model, cfg.heads, aux_head=AUX_HEAD)`` adds, in closed form.

    The heads, plus ``n x hidden`` for every fed attention (SE-R); the heads only for SE-A.
    """
    n = cfg.num_classes
    total = sum(aux_head_params(cfg.widths[max(_position(h), 0)], n, **AUX_HEAD) for h in cfg.heads)
    if conditioned:
        for stage, w in enumerate(cfg.widths):
            if any(_position(h) < stage for h in cfg.heads):
                total += cfg.blocks * n * hidden_width(cfg.kind, w, cfg.r)
    return total


# --- strategies ---------------------------------------------------------------------------------


@st.composite
def backbone_configs(draw: st.DrawFn, *, max_stages: int = 4) -> BackboneConfig:
    """A tiny backbone (2-4 stages, widths 4-16) with 1-2 heads at valid positions.

    A valid head position has attention after it: the stem or any stage but the last.
    """
    n_stages = draw(st.integers(2, max_stages))
    kind = draw(st.sampled_from(BACKBONE_KINDS))
    widths = tuple(draw(st.lists(st.integers(4, 16), min_size=n_stages, max_size=n_stages)))
    # r <= min width keeps C // r >= 1 in every stage (SE and CBAM refuse r > C).
    r = draw(st.sampled_from([r for r in (1, 2, 4) if r <= min(widths)]))
    positions = ["stem"] + [f"stage{i}" for i in range(n_stages - 1)]
    n_heads = draw(st.integers(1, min(2, len(positions))))
    heads = draw(
        st.lists(st.sampled_from(positions), min_size=n_heads, max_size=n_heads, unique=True)
    )
    return BackboneConfig(
        widths=widths,
        blocks=draw(st.integers(1, 2)),
        block=draw(st.sampled_from(["basic", "bottleneck"])),
        kind=kind,
        r=r,
        inline_conv=kind == "inline_se" and draw(st.booleans()),
        heads=tuple(sorted(heads, key=_position)),
        num_classes=draw(st.integers(2, 7)),
        batch=draw(st.integers(2, 3)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
