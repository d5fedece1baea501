"""``aux_at="auto"``: the placement rule (``condattn.transform.placement``) on toy, CIFAR and zoo
models."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_batchnorm_
from hypothesis import given
from strategies_backbones import (
    AUX_HEAD,
    BackboneConfig,
    backbone_configs,
    build_backbone,
    expected_auto_aux_at,
)
from torch import nn

import condattn
from condattn import ConversionError
from condattn.models import create_model

N = 10


def _toy(widths=(4, 4, 4, 4), *, kind: str = "se", seed: int = 0) -> nn.Module:
    cfg = BackboneConfig(
        widths=widths, blocks=1, block="basic", kind=kind, r=2, inline_conv=False,
        heads=("stage0",), num_classes=N, batch=2, seed=seed,
    )  # fmt: skip
    return build_backbone(cfg)


def _strip_attention(model: nn.Module, keep: set[int]) -> nn.Module:
    """Replace the attention of every stage not in ``keep`` by ``nn.Identity``."""
    for i in range(len(model.stages)):
        if i not in keep:
            for block in getattr(model, f"stage{i}"):
                block.attn = nn.Identity()
    return model


@given(cfg=backbone_configs())
def test_auto_on_toy_backbones_matches_the_closed_form(cfg: BackboneConfig) -> None:
    model = build_backbone(cfg).eval()
    placement = condattn.auto_aux_at(model)
    assert placement.aux_at == expected_auto_aux_at(cfg), (cfg, placement)
    assert [s.name for s in placement.stages] == [f"stage{i}" for i in range(len(cfg.widths))]
    assert [s.reduction for s in placement.stages] == [2.0**i for i in range(len(cfg.widths))]
    conv = condattn.convert(model, "auto", aux_head=AUX_HEAD)
    c = condattn.get_config(conv)
    assert c.aux_at == expected_auto_aux_at(cfg)
    assert c.placement == placement.reason and "paper: 2nd and 3rd of 4" in c.placement
    assert condattn.list_attention(model, "auto") == condattn.list_attention(model, c.aux_at)


def test_auto_is_the_default_and_picks_the_papers_stages_of_cifar_se_resnet50() -> None:
    model = create_model("se_resnet50", num_classes=N, widths=(4, 4, 8, 8))
    assert condattn.auto_aux_at(model).aux_at == ("layer2", "layer3")
    cfg = condattn.get_config(condattn.convert(model, aux_head=AUX_HEAD))
    assert cfg.aux_at == ("layer2", "layer3")
    assert "reductions 2x and 4x (of 4 stages" in cfg.placement


def test_explicit_aux_at_is_recorded_as_given() -> None:
    cfg = condattn.get_config(condattn.convert(_toy(), ["stage1"], aux_head=AUX_HEAD))
    assert cfg.placement == "given"


def test_first_head_without_attention_before_the_second_merges_into_one() -> None:
    model = _strip_attention(_toy(), keep={3})  # like lcnet: attention in the last stage only
    placement = condattn.auto_aux_at(model)
    assert placement.aux_at == ("stage2",)
    assert "no attention between 'stage1' and 'stage2': one head at 'stage2'" in placement.reason


def test_trailing_head_without_attention_after_it_is_dropped() -> None:
    model = _strip_attention(_toy(), keep={2})
    placement = condattn.auto_aux_at(model)
    assert placement.aux_at == ("stage1",)
    assert "no attention after 'stage2': head dropped" in placement.reason


def test_attention_before_the_papers_stages_only_gives_one_earlier_head() -> None:
    model = _strip_attention(_toy(), keep={1})
    placement = condattn.auto_aux_at(model)
    assert placement.aux_at == ("stage0",)
    assert "one head at 'stage0', the latest stage end followed by attention" in placement.reason
    cfg = condattn.get_config(condattn.convert(model, aux_head=AUX_HEAD))
    assert cfg.feeds == {"stage0": ("stage1.0.attn",)}


def test_no_attention_is_an_error_for_se_r_but_not_for_se_a() -> None:
    model = _strip_attention(_toy(), keep=set())
    with pytest.raises(ConversionError, match="no swappable attention follows any stage end"):
        condattn.convert(model, "auto")
    cfg = condattn.get_config(condattn.convert(model, "auto", conditioned=False))
    assert cfg.aux_at == ("stage1", "stage2") and "SE-A" in cfg.placement


def test_auto_with_two_and_three_stages() -> None:
    assert condattn.auto_aux_at(_toy((4, 4))).aux_at == ("stage0",)
    assert condattn.auto_aux_at(_toy((4, 4, 4))).aux_at == ("stage0", "stage1")


def test_auto_needs_downsampling() -> None:
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.se = condattn.nn.SqueezeExcite(4, r=2)
            self.fc = nn.Linear(4, N)

        def forward(self, x):
            return self.fc(self.se(self.conv(x)).mean((2, 3)))

    with pytest.raises(ConversionError, match="needs at least two resolution stages"):
        condattn.convert(Flat(), "auto")


def _assert_auto_preserves_function(model: nn.Module, expected_aux_at, what: str) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(model).eval()
    conv = condattn.convert(model, "auto", init="zeros").eval()
    assert condattn.get_config(conv).aux_at == expected_aux_at
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = model(x), conv(x).logits
    rel = ((got - want).abs().max() / want.abs().max()).item()
    assert rel <= 1e-4, f"{what}: convert(aux_at='auto', init='zeros') rel max diff {rel:.2e}"


def test_auto_on_torchvision_mobilenet_v3_large() -> None:
    from torchvision.models import mobilenet_v3_large

    model = mobilenet_v3_large(weights=None, num_classes=N)
    _assert_auto_preserves_function(model, ("features.6", "features.12"), "mobilenet_v3_large")


def test_auto_on_timm_lcnet_050() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("lcnet_050", pretrained=False, num_classes=N)
    placement = condattn.auto_aux_at(model)
    assert "one head at 'blocks.4'" in placement.reason  # its SE sits in the last stage only
    _assert_auto_preserves_function(model, ("blocks.4",), "lcnet_050")
