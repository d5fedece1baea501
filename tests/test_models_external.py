"""``timm:NAME`` and ``torchvision:NAME`` via ``create_model``: random weights, 32x32 inputs."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import assert_shape
from torch import nn

import condattn
from condattn.models import (
    build_external,
    check_model_name,
    create_model,
    is_external,
    list_external_models,
    list_models,
    register_model,
)
from condattn.nn import CondSqueezeExcite

timm = pytest.importorskip("timm")


def _forward(model: nn.Module, *, train: bool = False) -> torch.Tensor:
    model.train(train)
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32))


# --- building --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["timm:seresnet18", "torchvision:mobilenet_v3_small"])
def test_external_model_has_num_classes_logits_at_32px(name: str) -> None:
    model = create_model(name, num_classes=10)
    assert_shape(_forward(model), (2, 10), what=f"create_model({name!r}, num_classes=10), eval")
    assert_shape(_forward(model, train=True), (2, 10), what=f"{name}, train mode")


def test_timm_build_is_timms_own_model_with_random_weights() -> None:
    model = create_model("timm:seresnet18", num_classes=10)
    assert type(model) is type(timm.create_model("seresnet18", num_classes=10))
    assert model.fc.out_features == 10
    # random init: two builds differ (pretrained weights would be equal)
    other = create_model("timm:seresnet18", num_classes=10)
    assert not torch.equal(model.conv1.weight, other.conv1.weight)


def test_kwargs_reach_the_timm_constructor() -> None:
    model = create_model("timm:seresnet18", num_classes=10, drop_rate=0.25)
    assert model.drop_rate == 0.25
    assert create_model("timm:seresnet18", num_classes=10).drop_rate == 0.0


def test_kwargs_reach_the_torchvision_constructor() -> None:
    model = create_model("torchvision:mobilenet_v3_small", num_classes=10, dropout=0.125)
    drops = [m.p for m in model.classifier if isinstance(m, nn.Dropout)]
    assert drops == [0.125], drops


def test_build_external_takes_the_options_as_a_mapping() -> None:
    model = build_external("timm:seresnet18", num_classes=7, kwargs={"drop_rate": 0.5})
    assert (model.fc.out_features, model.drop_rate) == (7, 0.5)


def test_torchvision_googlenet_returns_one_tensor_in_train_mode() -> None:
    """torchvision's own aux classifiers are off, so train mode gives logits, not a tuple."""
    model = create_model("torchvision:googlenet", num_classes=10)
    out = _forward(model, train=True)
    assert isinstance(out, torch.Tensor), type(out)
    assert model.aux1 is None and model.aux2 is None


def test_timm_name_with_a_pretrained_tag_builds_without_weights() -> None:
    model = create_model("timm:resnet18.a1_in1k", num_classes=10)
    assert model.fc.out_features == 10


# --- names and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("timm:seresnet181", "timm:seresnet18"),
        ("torchvision:resnt18", "torchvision:resnet18"),
        ("torchvision:mobilenet_v3_smal", "torchvision:mobilenet_v3_small"),
    ],
)
def test_unknown_external_name_gives_close_matches_in_one_line(name: str, close: str) -> None:
    with pytest.raises(ValueError, match=r"unknown (timm|torchvision) model") as err:
        create_model(name, num_classes=10)
    msg = str(err.value)
    assert close in msg, msg
    assert "\n" not in msg
    assert "'timm:NAME' or 'torchvision:NAME'" in msg, f"valid forms not named: {msg}"


def test_a_name_of_the_other_zoo_is_pointed_out() -> None:
    with pytest.raises(ValueError, match=r"torchvision:mobilenet_v3_small exists"):
        create_model("timm:mobilenet_v3_small", num_classes=10)


def test_unknown_source_lists_the_valid_sources() -> None:
    with pytest.raises(ValueError, match=r"unknown model source 'tv'.*timm, torchvision"):
        create_model("tv:resnet18", num_classes=10)
    with pytest.raises(ValueError, match="names no model"):
        create_model("timm:", num_classes=10)


def test_unknown_zoo_name_gives_close_matches_and_the_external_forms() -> None:
    with pytest.raises(
        ValueError, match=r"close matches: se_resnet50.*not a registered model; valid: "
    ) as err:
        create_model("se_resnt50", num_classes=10)
    assert "'timm:NAME' / 'torchvision:NAME'" in str(err.value)


def test_missing_timm_says_pip_install_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ModuleNotFoundError, match="pip install timm"):
        create_model("timm:seresnet18", num_classes=10)
    # torchvision names do not need timm
    assert create_model("torchvision:resnet18", num_classes=3).fc.out_features == 3


@pytest.mark.parametrize(
    ("option", "value"),
    [("r", 4), ("widths", (8, 16, 32, 64)), ("pretrained", True), ("weights", "DEFAULT")],
)
def test_options_the_build_owns_are_refused_by_name(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"option '{option}' cannot be passed"):
        create_model("timm:seresnet18", num_classes=10, **{option: value})


def test_external_build_needs_num_classes() -> None:
    with pytest.raises(ValueError, match="pass num_classes="):
        create_model("torchvision:resnet18")


@pytest.mark.parametrize("name", ["se_resnet18", "timm:seresnet18", "torchvision:resnet18"])
@pytest.mark.parametrize("n", [0, -3, True, 2.0])
def test_non_positive_num_classes_is_a_value_error_naming_it(name: str, n: object) -> None:
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model(name, num_classes=n)


def test_check_model_name_returns_the_source() -> None:
    assert check_model_name("se_resnet50") == "condattn"
    assert check_model_name("timm:seresnet18") == "timm"
    assert check_model_name("torchvision:resnet18") == "torchvision"
    assert is_external("timm:x") and not is_external("se_resnet50")


def test_list_models_by_source_gives_names_create_model_takes() -> None:
    names = list_models("seresnet18", source="timm")
    assert "timm:seresnet18" in names
    tv = list_models(source="torchvision")
    assert "torchvision:mobilenet_v3_small" in tv and all(n.startswith("torchvision:") for n in tv)
    assert len(tv) == len(list_external_models("torchvision"))
    with pytest.raises(ValueError, match="valid: condattn, timm, torchvision"):
        list_models(source="hub")


def test_registry_refuses_names_with_a_colon() -> None:
    with pytest.raises(ValueError, match="may not contain ':'"):
        register_model("timm:my_net")(lambda **kw: nn.Identity())


# --- conversion ------------------------------------------------------------------------------


def test_timm_seresnet18_converts_to_se_r() -> None:
    model = create_model("timm:seresnet18", num_classes=10)
    se_r = condattn.convert(model, aux_at=["layer2", "layer3"], init="default")
    twins = [n for n, m in se_r.named_modules() if isinstance(m, CondSqueezeExcite)]
    assert len(twins) == 4, twins  # layer3.0/.1 fed by layer2's head, layer4.0/.1 by layer3's
    out = se_r.eval()(torch.randn(2, 3, 32, 32))
    assert_shape(out.logits, (2, 10), what="timm:seresnet18 SE-R logits")
    assert len(out.aux_logits) == 2
    for t in out.aux_logits:
        assert_shape(t, (2, 10), what="timm:seresnet18 SE-R aux logits")


def test_model_without_attention_has_nothing_to_condition() -> None:
    """torchvision:resnet18 has no attention: SE-A converts, SE-R does not."""
    model = create_model("torchvision:resnet18", num_classes=10)
    assert condattn.list_attention(model) == {}
    se_a = condattn.convert(model, aux_at=["layer2", "layer3"], conditioned=False)
    assert len(se_a.eval()(torch.randn(2, 3, 32, 32)).aux_logits) == 2
    with pytest.raises(condattn.ConversionError, match="no attention module"):
        condattn.convert(model, aux_at=["layer2", "layer3"])
