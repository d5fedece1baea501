"""``condattn.convert`` end to end on small timm models with the other channel-attention types.

One small model per type, built without weights (eval mode, 64x64 inputs): the attention after
each head is swapped for its twin, a zero-init conversion keeps the model's function (relative
max difference <= 1e-4) and ``init="default"`` changes it. timm registers no model with
``CecaModule``, ``GatherExcite`` or ``LightCbamModule``, so those go into timm's ResNet-10-T
through its own ``block_args={"attn_layer": ...}`` hook.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from helpers import assert_close, assert_not_close, randomize_batchnorm_
from torch import nn

import condattn
from condattn.nn import (
    CondCeca,
    CondGatherExcite,
    CondGlobalContext,
    CondLightCbam,
    CondSelectiveKernel,
    CondSplitAttn,
)
from condattn.transform.mappings import cond_types

timm = pytest.importorskip("timm")

from timm.layers.gather_excite import GatherExcite  # noqa: E402
from timm.layers.mlp import ConvMlp  # noqa: E402

N = 10
SIZE = 64


def _gather_excite_mlp(channels: int, **kw) -> nn.Module:
    """timm's GatherExcite(use_mlp=True), which timm 1.0.31's constructor cannot build (it passes
    ``*dd`` positionally to ConvMlp): built without the MLP, then given the ConvMlp it meant."""
    try:
        return GatherExcite(channels, **kw)
    except TypeError:
        m = GatherExcite(channels, use_mlp=False, **kw)
        m.mlp = ConvMlp(channels, max(channels // 16, 1), act_layer=nn.ReLU)
        return m


def _timm(name: str, attn_layer=None) -> Callable[[], nn.Module]:
    kw = {} if attn_layer is None else {"block_args": {"attn_layer": attn_layer}}
    return lambda: timm.create_model(name, pretrained=False, num_classes=N, **kw)


# name -> (builder, aux_at, the twin type, number of attention modules each head feeds)
CASES: dict[str, tuple[Callable[[], nn.Module], list[str], type[nn.Module], list[int]]] = {
    "resnet10t_ceca": (_timm("resnet10t", "ceca"), ["layer2", "layer3"], CondCeca, [1, 1]),
    "resnet10t_ge_free": (
        _timm("resnet10t", functools.partial(GatherExcite, use_mlp=False)),
        ["layer2", "layer3"],
        CondGatherExcite,
        [1, 1],
    ),
    "resnet10t_ge_mlp_extent2": (
        _timm("resnet10t", functools.partial(_gather_excite_mlp, extent=2)),
        ["layer2", "layer3"],
        CondGatherExcite,
        [1, 1],
    ),
    "gcresnext26ts": (_timm("gcresnext26ts"), ["stages.1", "stages.2"], CondGlobalContext, [2, 2]),
    "gc_efficientnetv2_rw_t": (
        _timm("gc_efficientnetv2_rw_t"),
        ["blocks.2", "blocks.4"],
        CondGlobalContext,
        [15, 14],
    ),
    "resnet10t_lcbam": (_timm("resnet10t", "lcbam"), ["layer2", "layer3"], CondLightCbam, [1, 1]),
    "skresnet18": (_timm("skresnet18"), ["layer2", "layer3"], CondSelectiveKernel, [2, 2]),
    "resnest14d": (_timm("resnest14d"), ["layer2", "layer3"], CondSplitAttn, [1, 1]),
}


@torch.no_grad()
def _trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, and timm's zero-initialised GlobalContext ``mlp_add.fc2`` given
    weights (fresh, the add branch outputs 0 whatever its input, T included)."""
    randomize_batchnorm_(model)
    for name, p in model.named_parameters():
        if "mlp_add.fc2" in name:
            p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("name", list(CASES))
def test_timm_model_with_the_attention_keeps_its_function(name: str) -> None:
    build, aux_at, twin_type, fed_counts = CASES[name]
    torch.manual_seed(0)
    model = _trained_like(build()).eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    x = torch.randn(2, 3, SIZE, SIZE)

    conv = condattn.convert(model, aux_at, init="zeros", example_input=example).eval()
    cfg = condattn.get_config(conv)
    assert [len(cfg.feeds[a]) for a in aux_at] == fed_counts, cfg.feeds
    swapped = {n: type(m) for n, m in conv.named_modules() if isinstance(m, cond_types())}
    assert set(swapped) == {a for atts in cfg.feeds.values() for a in atts}
    assert set(swapped.values()) == {twin_type}

    default = condattn.convert(model, aux_at, init="default", example_input=example).eval()
    with torch.no_grad():
        expected = model(x)
        out = conv(x).logits
        changed = default(x).logits
    scale = float(expected.abs().max())
    assert_close(out, expected, atol=1e-4 * scale, rtol=0, what=f"convert({name}), zero init")
    assert_not_close(changed, expected, min_abs_diff=1e-6, what=f"convert({name}), default init")


@pytest.mark.parametrize("name", ["skresnet18", "resnest14d"])
def test_converted_conv_block_twins_train(name: str) -> None:
    """The twins that replace a whole conv block train: every parameter gets a gradient."""
    build, aux_at, _, _ = CASES[name]
    conv = condattn.convert(build(), aux_at, init="default").train()
    out = conv(torch.randn(2, 3, 32, 32))
    (out.logits.sum() + sum(t.sum() for t in out.aux_logits)).backward()
    missing = [n for n, p in conv.named_parameters() if p.grad is None]
    assert not missing, missing
