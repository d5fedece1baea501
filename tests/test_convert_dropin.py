"""Using a converted model in other people's code: ``logits_only``, the model's dtype and device,
``torch.save`` of the whole module, loading the original model's weights after converting, and
a ``num_classes`` that disagrees with the model."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, randomize_batchnorm_
from hypothesis import given
from strategies_backbones import AUX_HEAD, BackboneConfig, backbone_configs, build_backbone
from torch import nn

import condattn
from condattn import CondOutput, ConversionError
from condattn.models import create_model
from condattn.nn import AuxHead

N = 10


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm_(create_model("se_resnet18", num_classes=N, widths=(8, 8, 16, 16)))


def x32(batch: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=dtype)


# --- logits_only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("conditioned", [True, False])
def test_logits_only_is_a_drop_in_classifier(conditioned: bool) -> None:
    conv = condattn.convert(tiny(), conditioned=conditioned, init="default")
    clf = condattn.logits_only(conv)
    x, y = x32(), torch.tensor([1, 2, 3])
    for mode in ("train", "eval"):
        conv.train(mode == "train")
        clf.train(mode == "train")
        torch.manual_seed(0)
        want = conv(x).logits
        torch.manual_seed(0)
        got = clf(x)
        assert type(got) is torch.Tensor, f"logits_only, {mode}: returned {type(got).__name__}"
        assert_close(got, want, atol=0, rtol=0, what=f"logits_only(SE-R={conditioned}), {mode}")
    loss = F.cross_entropy(clf.train()(x), y)
    loss.backward()
    assert clf(x).argmax(1).shape == (3,)
    # T is still computed inside where it feeds attention; heads that feed nothing are dropped
    heads = {n for n, m in clf.named_modules() if isinstance(m, AuxHead)}
    assert heads == ({"aux1", "aux2"} if conditioned else set())
    if conditioned:
        assert clf.aux1.fc2.weight.grad is not None  # the heads learn through the attention
    # the parameters are shared with the converted model
    assert clf.fc.weight is conv.fc.weight
    assert condattn.get_config(clf) == condattn.get_config(conv)


def test_logits_only_refuses_a_plain_model() -> None:
    with pytest.raises(ValueError, match=r"not made by condattn\.convert"):
        condattn.logits_only(tiny())


# --- dtype and device -----------------------------------------------------------------------------


def test_a_float64_model_converts_and_runs_in_float64() -> None:
    model = tiny().double().eval()
    conv = condattn.convert(model, init="zeros").eval()
    assert {p.dtype for p in conv.parameters()} == {torch.float64}
    x = x32(dtype=torch.float64)
    with torch.no_grad():
        out = conv(x)
        assert_close(out.logits, model(x), atol=1e-12, rtol=0, what="float64 conversion, zero init")
    assert all(t.dtype == torch.float64 for t in out.aux_logits)


def test_a_bfloat16_model_converts_and_runs_forward() -> None:
    model = tiny().to(torch.bfloat16).eval()
    conv = condattn.convert(model).eval()
    assert {p.dtype for p in conv.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = conv(x32(dtype=torch.bfloat16))
    assert out.logits.dtype == torch.bfloat16 and out.aux_logits[0].dtype == torch.bfloat16
    assert torch.isfinite(out.logits.float()).all()


# --- torch.save of the whole module ---------------------------------------------------------------


def test_torch_save_and_load_of_a_converted_model_round_trip() -> None:
    conv = condattn.convert(tiny(), init="default").eval()
    buf = io.BytesIO()
    torch.save(conv, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False).eval()
    x = x32()
    with torch.no_grad():
        out, want = back(x), conv(x)
    assert isinstance(out, CondOutput)
    assert_close(out.logits, want.logits, atol=0, rtol=0, what="torch.load(torch.save(conv))")
    assert condattn.get_config(back) == condattn.get_config(conv)
    back_clf = condattn.logits_only(back)  # and it is still a converted model
    with torch.no_grad():
        assert_close(back_clf(x), want.logits, atol=0, rtol=0, what="logits_only after torch.load")


def test_torch_save_round_trips_a_timm_model() -> None:
    timm = pytest.importorskip("timm")
    example = torch.zeros(1, 3, 64, 64)
    model = timm.create_model("ecaresnet26t", pretrained=False, num_classes=N)
    conv = condattn.convert(model, example_input=example, init="default").eval()
    buf = io.BytesIO()
    torch.save(conv, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(back(x).logits, conv(x).logits, atol=0, rtol=0, what="timm, torch.save")


# --- load_base_state_dict -------------------------------------------------------------------------


def test_load_base_state_dict_after_converting_gives_the_trained_function() -> None:
    trained = tiny(seed=1).eval()
    conv = condattn.convert(tiny(seed=2), init="default")
    se = conv.get_submodule("layer3.0.attn")
    t_cols = se.fc1.weight[:, :N].clone()
    result = condattn.load_base_state_dict(conv, trained.state_dict())
    assert result == condattn.LoadResult([], [])
    src = trained.get_submodule("layer3.0.attn")
    assert torch.equal(se.fc1.weight[:, N:], src.fc1.weight), "W1's C-part holds the loaded W1"
    assert torch.equal(se.fc1.weight[:, :N], t_cols), "W1's T-columns stay as they were"
    assert torch.equal(se.fc2.weight, src.fc2.weight)
    # with zero T-columns it is exactly the trained model
    zero = condattn.convert(tiny(seed=3), init="zeros")
    condattn.load_base_state_dict(zero, trained.state_dict())
    x = x32()
    with torch.no_grad():
        assert_close(zero.eval()(x).logits, trained(x), what="convert, then load trained weights")


@given(cfg=backbone_configs(max_stages=3))
def test_load_base_state_dict_on_toy_backbones(cfg: BackboneConfig) -> None:
    """Every attention kind, inline SE's W1 (CondLinear) included."""
    trained = randomize_batchnorm_(build_backbone(cfg, seed=cfg.seed + 1)).eval()
    conv = condattn.convert(build_backbone(cfg), list(cfg.heads), aux_head=AUX_HEAD)
    assert condattn.load_base_state_dict(conv, trained.state_dict()) == ([], [])
    x = torch.randn(cfg.x_shape, generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        want = trained(x)
        assert_close(conv.eval()(x).logits, want, what=f"load_base_state_dict, {cfg}")


def test_load_base_state_dict_lists_missing_and_unexpected_keys() -> None:
    conv = condattn.convert(tiny())
    sd = tiny(seed=1).state_dict()
    del sd["layer3.0.attn.fc1.weight"], sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as info:
        condattn.load_base_state_dict(conv, sd)
    msg = str(info.value)
    assert "missing keys (2): ['fc.bias', 'layer3.0.attn.fc1.weight']" in msg
    assert "unexpected keys (1): ['extra.weight']" in msg and "strict=False" in msg
    # the converted model's own new keys are not part of the original layout
    with pytest.raises(RuntimeError, match=r"unexpected keys \(1\): \['aux1.conv.weight'\]"):
        condattn.load_base_state_dict(
            conv, {**tiny().state_dict(), "aux1.conv.weight": conv.aux1.conv.weight}
        )
    result = condattn.load_base_state_dict(conv, sd, strict=False)
    assert result.missing_keys == ["fc.bias", "layer3.0.attn.fc1.weight"]
    assert result.unexpected_keys == ["extra.weight"]
    assert torch.equal(conv.fc.weight, sd["fc.weight"])


def test_load_base_state_dict_refuses_a_shape_mismatch() -> None:
    conv = condattn.convert(tiny())
    sd = tiny().state_dict()
    sd["layer3.0.attn.fc2.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match=r"size mismatch for layer3\.0\.attn\.fc2\.weight"):
        condattn.load_base_state_dict(conv, sd)


def test_load_base_state_dict_maps_torchvision_and_timm_layouts() -> None:
    """Renamed and reshaped weights: torchvision's 1x1-conv SE, timm's conv_reduce/conv_expand."""
    from torchvision.models import mobilenet_v3_small

    timm = pytest.importorskip("timm")
    builds = [
        lambda: mobilenet_v3_small(weights=None, num_classes=N),
        lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=N),
    ]
    x = torch.randn(2, 3, 64, 64)
    for build in builds:
        torch.manual_seed(0)
        trained = randomize_batchnorm_(build()).eval()
        conv = condattn.convert(build(), example_input=torch.zeros(1, 3, 64, 64))
        condattn.load_base_state_dict(conv, trained.state_dict())
        with torch.no_grad():
            want = trained(x)
            got = conv.eval()(x).logits
        rel = ((got - want).abs().max() / want.abs().max()).item()
        assert rel <= 1e-5, f"load_base_state_dict({type(trained).__name__}): rel diff {rel:.2e}"


# --- num_classes ----------------------------------------------------------------------------------


def test_num_classes_that_disagrees_with_the_logits_is_an_error() -> None:
    with pytest.raises(ConversionError, match=r"num_classes=7, but the model's logits have 10"):
        condattn.convert(tiny(), num_classes=7)
    assert condattn.get_config(condattn.convert(tiny(), num_classes=N)).num_classes == N
