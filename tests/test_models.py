"""The model registry and the CIFAR ResNets with pluggable attention (tiny widths only)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_all_params_have_grad, assert_shape
from torch import nn

from condattn.models import (
    ATTENTION_KINDS,
    BasicBlock,
    Bottleneck,
    CifarResNet,
    create_model,
    list_models,
    register_model,
)
from condattn.models import registry as registry_module
from condattn.nn import Cbam, CoordAttn, Eca, SqueezeExcite

TINY = (8, 16, 32, 64)
PREFIXES = {"none": "", "se": "se_", "cbam": "cbam_", "coord": "ca_", "eca": "eca_"}
DEPTHS = (18, 34, 50, 101, 152)
ATTENTION_TYPES = {
    "none": nn.Identity,
    "se": SqueezeExcite,
    "cbam": Cbam,
    "coord": CoordAttn,
    "eca": Eca,
}
#: one model per block type: BasicBlock (18) and Bottleneck (50)
TINY_DEPTHS = {18: (BasicBlock, 1), 50: (Bottleneck, 4)}


def tiny(kind: str, depth: int, **kwargs) -> nn.Module:
    return create_model(f"{PREFIXES[kind]}resnet{depth}", num_classes=10, widths=TINY, **kwargs)


# --- registry --------------------------------------------------------------------------------


def test_list_models_has_every_attention_kind_at_every_depth() -> None:
    names = set(list_models())
    expected = {f"{p}resnet{d}" for p in PREFIXES.values() for d in DEPTHS}
    assert expected <= names, f"missing: {sorted(expected - names)}"


def test_list_models_is_sorted_and_filters_by_substring() -> None:
    assert list_models() == sorted(list_models())
    assert list_models("se_") == [f"se_resnet{d}" for d in sorted(DEPTHS, key=str)]
    assert list_models("no-such-model") == []


def test_create_unknown_model_raises_listing_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'") as err:
        create_model("nope")
    for name in ("resnet18", "se_resnet50", "cbam_resnet34", "ca_resnet101", "eca_resnet152"):
        assert name in str(err.value), f"{name} is not listed in: {err.value}"


def test_registering_a_duplicate_name_raises_and_keeps_the_original() -> None:
    original = registry_module._MODELS["se_resnet50"]
    with pytest.raises(ValueError, match="'se_resnet50' is already registered"):
        register_model("se_resnet50")(lambda **kw: nn.Identity())
    assert registry_module._MODELS["se_resnet50"] is original


def test_register_model_defaults_to_the_function_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_MODELS", dict(registry_module._MODELS))

    @register_model()
    def my_test_net(**kwargs) -> nn.Module:
        return nn.Linear(2, kwargs.get("num_classes", 3))

    assert "my_test_net" in list_models()
    assert create_model("my_test_net", num_classes=5).out_features == 5
    with pytest.raises(ValueError, match="already registered"):
        register_model()(my_test_net)


# --- tiny models -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", sorted(TINY_DEPTHS))
@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_tiny_model_maps_images_to_logits_through_four_stages(kind: str, depth: int) -> None:
    model = tiny(kind, depth).eval()
    _, expansion = TINY_DEPTHS[depth]
    seen: dict[str, tuple[int, ...]] = {}
    for i in range(1, 5):
        getattr(model, f"layer{i}").register_forward_hook(
            lambda m, inp, out, i=i: seen.__setitem__(f"layer{i}", tuple(out.shape))
        )
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    name = f"{PREFIXES[kind]}resnet{depth}(widths={TINY})"
    assert_shape(out, (2, 10), what=name)
    for i, (width, side) in enumerate(zip(TINY, (32, 16, 8, 4)), start=1):
        expected = (2, width * expansion, side, side)
        assert seen[f"layer{i}"] == expected, f"{name}.layer{i}: {seen[f'layer{i}']}"


@pytest.mark.parametrize("depth", sorted(TINY_DEPTHS))
@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_every_block_holds_the_requested_attention(kind: str, depth: int) -> None:
    model = tiny(kind, depth)
    block_type, _ = TINY_DEPTHS[depth]
    blocks = [m for m in model.modules() if isinstance(m, block_type)]
    assert len(blocks) == (8 if depth == 18 else 16)
    for blk in blocks:
        assert type(blk.attn) is ATTENTION_TYPES[kind], type(blk.attn)
    other = tuple(t for k, t in ATTENTION_TYPES.items() if k not in (kind, "none"))
    assert not any(isinstance(m, other) for m in model.modules())


def test_r_reaches_the_attention_blocks() -> None:
    model = tiny("se", 18, r=4)
    for blk in model.modules():
        if isinstance(blk, BasicBlock):
            assert blk.attn.fc1.out_features == blk.attn.channels // 4


def test_stages_are_named_layer1_to_layer4() -> None:
    names = {name for name, _ in tiny("se", 18).named_children()}
    assert {"stem", "layer1", "layer2", "layer3", "layer4", "fc"} <= names


@pytest.mark.parametrize("depth", sorted(TINY_DEPTHS))
def test_cifar_se_resnet_layout(depth: int) -> None:
    """The paper's section 3.1: 3x3 stride-1 stem, no max-pool; every conv has a bias."""
    model = tiny("se", depth)
    stem = model.stem[0]
    assert isinstance(stem, nn.Conv2d)
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs, "no convs found"
    no_bias = [n for n, m in convs.items() if m.bias is None]
    assert not no_bias, f"convs without bias: {no_bias}"
    pools = [n for n, m in model.named_modules() if isinstance(m, (nn.MaxPool2d, nn.MaxPool1d))]
    assert not pools, f"max-pools found: {pools}"
    assert model.fc.out_features == 10


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_every_parameter_gets_a_gradient(kind: str) -> None:
    torch.manual_seed(0)
    model = tiny(kind, 18).train()
    out = model(torch.randn(2, 3, 16, 16))  # 16x16 keeps it quick; layer4 is still 2x2
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 7])).backward()
    assert_all_params_have_grad(model, what=f"tiny {kind} resnet18 backward", allow_zero=True)


def test_unknown_attention_kind_raises_listing_valid_kinds() -> None:
    with pytest.raises(ValueError, match="unknown attention 'sk'") as err:
        CifarResNet(BasicBlock, (1, 1, 1, 1), attention="sk", widths=TINY)
    for kind in ATTENTION_KINDS:
        assert kind in str(err.value)


@pytest.mark.parametrize(
    ("layers", "widths"), [((1, 1, 1), TINY), ((1, 1, 1, 1), (8, 16, 32)), ((1,) * 5, TINY)]
)
def test_stage_count_other_than_four_raises(layers, widths) -> None:
    with pytest.raises(ValueError, match="need 4 entries"):
        CifarResNet(BasicBlock, layers, widths=widths)


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("num_classes", 0),
        ("num_classes", -1),
        ("r", 0),
        ("r", -8),
        ("widths", (8, 16, 0, 64)),
        ("widths", (8, 16, -32, 64)),
        ("layers", (1, 0, 1, 1)),
    ],
)
def test_non_positive_sizes_are_value_errors_naming_the_argument(arg: str, value) -> None:
    kwargs = {"num_classes": 10, "widths": TINY, arg: value}
    if arg == "layers":  # the registered builders fix the layers; CifarResNet takes them
        with pytest.raises(ValueError, match=f"^{arg} must be"):
            CifarResNet(BasicBlock, value, widths=TINY)
        return
    with pytest.raises(ValueError, match=f"^{arg} must be"):
        create_model("se_resnet18", **kwargs)
    with pytest.raises(ValueError, match=f"^{arg} must be"):
        CifarResNet(BasicBlock, (1, 1, 1, 1), **kwargs)


def test_googlenet_cifar_refuses_zero_classes() -> None:
    with pytest.raises(ValueError, match=r"^num_classes must be a positive integer"):
        create_model("googlenet_cifar", num_classes=0)
