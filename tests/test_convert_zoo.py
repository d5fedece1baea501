"""``condattn.convert`` on other people's models: torchvision and timm, built without weights.

For each model: the attention is found and swapped for its Cond twin, a zero-init conversion
computes the original function in eval mode, and ``init="default"`` changes it (so T does reach
the attention). ImageNet models run on 64x64 inputs with ``example_input`` of the same size, to
stay fast on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from helpers import assert_close, assert_not_close, randomize_batchnorm_
from torch import nn
from torchvision.ops import SqueezeExcitation

import condattn
from condattn.transform.mappings import cond_types

timm = pytest.importorskip("timm")

N = 10
SIZE = 64


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(weights=None, num_classes=N)


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=N, **kw)


def tv_resnet50_with_user_se() -> nn.Module:
    """torchvision ResNet-50 where the user added SE: each Bottleneck's bn3 -> (bn3, SE)."""
    model = torchvision.models.resnet50(weights=None, num_classes=N)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            c = block.bn3.num_features
            block.bn3 = nn.Sequential(block.bn3, SqueezeExcitation(c, c // 16))
    return model


# name -> (builder, aux_at, number of attention modules each head feeds)
CASES: dict[str, tuple[Callable[[], nn.Module], list[str], list[int]]] = {
    "tv_resnet50_user_se": (tv_resnet50_with_user_se, ["layer2", "layer3"], [6, 3]),
    "tv_efficientnet_b0": (_tv("efficientnet_b0"), ["features.3", "features.5"], [6, 5]),
    "tv_mobilenet_v3_small": (_tv("mobilenet_v3_small"), ["features.3", "features.8"], [5, 3]),
    "tv_regnet_y_400mf": (
        _tv("regnet_y_400mf"),
        ["trunk_output.block2", "trunk_output.block3"],
        [6, 6],
    ),
    "timm_seresnet18": (_timm("seresnet18"), ["layer2", "layer3"], [2, 2]),
    "timm_ecaresnet26t": (_timm("ecaresnet26t"), ["layer2", "layer3"], [2, 2]),
    "timm_resnet18_cbam": (
        _timm("resnet18", block_args={"attn_layer": "cbam"}),
        ["layer2", "layer3"],
        [2, 2],
    ),
    "timm_resnet18_coord": (
        _timm("resnet18", block_args={"attn_layer": "coord"}),
        ["layer2", "layer3"],
        [2, 2],
    ),
    "timm_efficientnet_b0": (_timm("efficientnet_b0"), ["blocks.2", "blocks.4"], [6, 5]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_zoo_model_is_converted_and_keeps_its_function(name: str) -> None:
    build, aux_at, fed_counts = CASES[name]
    torch.manual_seed(0)
    model = randomize_batchnorm_(build()).eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    x = torch.randn(2, 3, SIZE, SIZE)
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}

    conv = condattn.convert(model, aux_at, example_input=example).eval()
    cfg = condattn.get_config(conv)
    assert cfg.num_classes == N
    assert [len(cfg.feeds[a]) for a in aux_at] == fed_counts, cfg.feeds
    swapped = {n for n, m in conv.named_modules() if isinstance(m, cond_types())}
    assert swapped == {a for atts in cfg.feeds.values() for a in atts}
    # the original is untouched: no attribute is added to any module (C comes from the graph)
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs
    assert not any(isinstance(m, cond_types()) for m in model.modules())

    default = condattn.convert(model, aux_at, example_input=example, init="default").eval()
    with torch.no_grad():
        expected = model(x)
        out = conv(x)
        changed = default(x).logits
    assert len(out.aux_logits) == len(aux_at)
    assert_close(out.logits, expected, atol=1e-5, rtol=0, what=f"convert({name}), zero init")
    assert_not_close(changed, expected, min_abs_diff=1e-6, what=f"convert({name}), default init")


def test_timm_model_trains_after_conversion() -> None:
    """Heads read stage outputs that timm's in-place ops must not clobber before backward."""
    conv = condattn.convert(timm.create_model("seresnet18", num_classes=N), ["layer2", "layer3"])
    conv.train()
    out = conv(torch.randn(2, 3, 32, 32))
    (out.logits.sum() + sum(t.sum() for t in out.aux_logits)).backward()
    assert all(p.grad is not None for p in conv.parameters())


def test_list_stages_of_a_torchvision_model_names_its_blocks() -> None:
    stages = condattn.list_stages(
        torchvision.models.mobilenet_v3_small(weights=None, num_classes=N),
        example_input=torch.zeros(1, 3, SIZE, SIZE),
    )
    assert [f"features.{i}" for i in range(13)] == [s for s in stages if s.count(".") == 1][:13]
    assert len(stages["features.3"]) == 5 + 3  # the SE of features.4 .. features.11
    assert stages["features.11"] == []


def test_list_attention_names_torchvision_and_timm_kinds() -> None:
    tv = condattn.list_attention(
        torchvision.models.mobilenet_v3_small(weights=None),
        ["features.3"],
        example_input=torch.zeros(1, 3, SIZE, SIZE),
    )
    assert {v["kind"] for v in tv.values()} == {"SqueezeExcitation"}
    assert tv["features.1.block.1"]["fed_by"] is None
    assert tv["features.4.block.2"]["fed_by"] == "features.3"
    tm = condattn.list_attention(timm.create_model("ecaresnet26t"), ["layer2"])
    assert {v["kind"] for v in tm.values()} == {"EcaModule"}
