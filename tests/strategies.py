"""Hypothesis strategies: they draw shapes and configs, never tensors.

Tests turn a drawn config into modules with the builders here (``make_block``, ``block_pair``)
and into tensors themselves, seeding torch from a drawn ``seed`` so that every example replays
exactly while hypothesis shrinks it.

The file is organised in sections; add new strategies to the matching section (or a new one):

1. primitives: sizes and seeds;
2. attention blocks: kinds, builders, block configs and cases;
3. backbones: model names and tiny model configs (to be filled in).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st
from torch import nn

from condattn.nn import (
    Cbam,
    CondCbam,
    CondCoordAttn,
    CondEca,
    CondSqueezeExcite,
    CoordAttn,
    Eca,
    SqueezeExcite,
)

# ---------------------------------------------------------------------------------------------
# 1. Primitives
# ---------------------------------------------------------------------------------------------

#: A seed for ``torch.manual_seed`` inside a test body.
seeds = st.integers(min_value=0, max_value=2**31 - 1)
#: B. Small: a property that holds for 3 samples rarely fails only at 64.
batch_sizes = st.integers(min_value=1, max_value=3)
#: C of an attention block's input.
channel_counts = st.integers(min_value=8, max_value=64)
#: H or W, including 1 and odd sizes.
spatial_sizes = st.integers(min_value=1, max_value=9)
#: n, the length of T (the aux head's number of classes).
cond_dims = st.integers(min_value=1, max_value=12)
#: Multipliers for T: ordinary logits up to huge ones (the zero T-columns must still cancel).
t_scales = st.sampled_from([1.0, 10.0, 1e3, 1e6])


def reductions(channels: int) -> st.SearchStrategy[int]:
    """r in ``1..channels``, so that the hidden width ``C // r`` is at least 1."""
    return st.integers(min_value=1, max_value=channels)


# ---------------------------------------------------------------------------------------------
# 2. Attention blocks
# ---------------------------------------------------------------------------------------------

#: The attention kinds with a plain block and a Cond twin (the model zoo's names).
KINDS: tuple[str, ...] = ("se", "cbam", "coord", "eca")
PLAIN_BLOCKS: dict[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "cbam": Cbam,
    "coord": CoordAttn,
    "eca": Eca,
}
COND_BLOCKS: dict[str, type[nn.Module]] = {
    "se": CondSqueezeExcite,
    "cbam": CondCbam,
    "coord": CondCoordAttn,
    "eca": CondEca,
}
#: Kinds whose gate reads BatchNorm statistics (train and eval mode differ).
KINDS_WITH_BATCHNORM: frozenset[str] = frozenset({"cbam", "coord"})

attention_kinds = st.sampled_from(KINDS)


def make_block(kind: str, channels: int, r: int) -> nn.Module:
    """The plain block of ``kind`` with C = ``channels`` (ECA has no reduction and ignores r)."""
    if kind == "eca":
        return Eca(channels)
    return PLAIN_BLOCKS[kind](channels, r=r)


def block_pair(
    kind: str, channels: int, r: int, cond_dim: int, *, init: str = "zeros"
) -> tuple[nn.Module, nn.Module]:
    """``(plain, twin)``: a fresh plain block and its twin built by ``from_module``."""
    plain = make_block(kind, channels, r)
    twin = COND_BLOCKS[kind].from_module(plain, cond_dim=cond_dim, init=init)
    return plain, twin


@dataclass(frozen=True)
class BlockConfig:
    """What builds a block pair: ``block_pair(kind, channels, r, cond_dim)``."""

    kind: str
    channels: int
    r: int
    cond_dim: int


@dataclass(frozen=True)
class BlockCase:
    """A block config plus an input shape and a torch seed: one full example."""

    config: BlockConfig
    batch: int
    height: int
    width: int
    seed: int

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.config.channels, self.height, self.width)

    @property
    def t_shape(self) -> tuple[int, int]:
        return (self.batch, self.config.cond_dim)


@st.composite
def block_configs(draw: st.DrawFn, kind: str | None = None) -> BlockConfig:
    """A config of the given ``kind`` (or any kind), with ``1 <= r <= channels``."""
    kind = draw(attention_kinds) if kind is None else kind
    channels = draw(channel_counts)
    return BlockConfig(
        kind=kind, channels=channels, r=draw(reductions(channels)), cond_dim=draw(cond_dims)
    )


@st.composite
def block_cases(draw: st.DrawFn, kind: str | None = None, *, train_safe: bool = False) -> BlockCase:
    """A block config with an input shape and a seed.

    Args:
        kind: fix the attention kind (tests usually parametrize over :data:`KINDS`).
        train_safe: only shapes that BatchNorm accepts in train mode (more than one value per
            channel, i.e. ``B * H * W > 1``; CBAM's spatial BN sees ``(B, 1, H, W)``).
    """
    config = draw(block_configs(kind))
    batch, height, width = draw(batch_sizes), draw(spatial_sizes), draw(spatial_sizes)
    if train_safe and batch * height * width == 1:
        height = 2
    return BlockCase(config, batch, height, width, draw(seeds))


# ---------------------------------------------------------------------------------------------
# 3. Backbones (model names, tiny widths): add strategies here.
# ---------------------------------------------------------------------------------------------
