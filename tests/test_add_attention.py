"""``condattn.add_attention``: attention inserted into plain CNNs keeps their function.

Issue 21's acceptance: ``init="identity"`` preserves the function (relative max difference
<= 1e-4, fp32, eval) on torchvision's ResNet-50, ConvNeXt-T, VGG-11-BN and DenseNet-121 and
timm's resnet50d and regnetx_002; the result follows ``.train()``/``.eval()`` and ``convert``
takes it (in train mode, checked in eval).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torchvision
from torch import nn

import condattn
from condattn.nn import Cbam, CoordAttn, Eca, ScaledSigmoid, SqueezeExcite

SIZE = 32


def _x(size: int = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _zoo(name: str) -> nn.Module:
    zoo, arch = name.split(":")
    if zoo == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(arch)
    return torchvision.models.get_model(arch)


@pytest.mark.parametrize(
    ("name", "standard"),
    [
        ("torchvision:resnet50", 16),
        ("torchvision:convnext_tiny", 18),
        ("torchvision:vgg11_bn", 0),
        ("torchvision:densenet121", 0),
        ("timm:resnet50d", 16),
        ("timm:regnetx_002", 13),
    ],
)
def test_identity_init_keeps_the_function(name: str, standard: int) -> None:
    torch.manual_seed(0)
    model = _zoo(name).eval()
    x = _x()
    with torch.no_grad():
        expected = model(x)
    model.train()  # inserted in train mode, compared in eval: it follows the mode
    added = condattn.add_attention(model, example_input=torch.zeros(1, 3, SIZE, SIZE))
    assert added.training and model.training
    with torch.no_grad():
        out = added.eval()(x)
    assert _rel(out, expected) <= 1e-4
    positions = Counter(a.position for a in condattn.get_added(added).values())
    assert positions["standard"] == standard and positions["post"] >= (standard == 0)
    assert all(isinstance(m, SqueezeExcite) for m in _new_modules(added))


def _new_modules(model: nn.Module) -> list[nn.Module]:
    return [model.get_submodule(n) for n in condattn.get_added(model)]


def test_resnet18_gets_standard_se_in_every_block_and_list_attention_shows_it() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    added = condattn.add_attention(model, r=8)
    names = [f"layer{i}.{j}.se" for i in range(1, 5) for j in range(2)]
    assert list(condattn.get_added(added)) == names
    listed = condattn.list_attention(added)
    assert [listed[n]["position"] for n in names] == ["standard"] * 8
    se = added.get_submodule("layer3.0.se")
    assert isinstance(se.gate, ScaledSigmoid) and not se.fc2.weight.any()
    assert se.fc1.out_features == 256 // 8
    assert not any(isinstance(m, SqueezeExcite) for m in model.modules())  # source untouched


class _DropNet(nn.Module):
    """A plain CNN whose forward depends on the mode (functional dropout, a ``training``
    branch), as fx freezes it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.stem(x))
        x = nn.functional.dropout(x, 0.5, training=self.training)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("kind", ["se", "eca", "cbam", "coord"])
def test_every_kind_then_convert_in_train_mode_keeps_eval_and_follows_the_mode(kind) -> None:
    torch.manual_seed(0)
    model = _DropNet().eval()
    x = _x(16)
    with torch.no_grad():
        expected = model(x)
    added = condattn.add_attention(model.train(), kind=kind, r=4)
    types = {"se": SqueezeExcite, "eca": Eca, "cbam": Cbam, "coord": CoordAttn}
    assert [type(m) for m in _new_modules(added)] == [types[kind]] * 2
    assert not added.shares_graph  # two graphs: the dropout follows the mode
    conv = condattn.convert(added, "auto", init="zeros")  # traced again, in train mode
    assert conv.training
    conv.eval()
    with torch.no_grad():
        a, b = conv(x).logits, conv(x).logits
    assert torch.equal(a, b)  # eval runs the eval graph: no dropout
    assert _rel(a, expected) <= 1e-5
    conv.train()
    with torch.no_grad():
        assert not torch.equal(conv(x).logits, conv(x).logits)  # train still drops


def test_init_default_is_a_plain_sigmoid_block_and_changes_the_function() -> None:
    torch.manual_seed(0)
    model = _DropNet().eval()
    added = condattn.add_attention(model, init="default").eval()
    se = _new_modules(added)[0]
    assert isinstance(se.gate, nn.Sigmoid) and se.fc2.weight.any()
    with torch.no_grad():
        assert _rel(added(_x(16)), model(_x(16))) > 1e-3


def test_at_names_a_block_a_stage_or_any_module() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    assert list(condattn.get_added(condattn.add_attention(model, at="layer2"))) == [
        "layer2.0.se",
        "layer2.1.se",
    ]
    one = condattn.add_attention(model, at=["layer3.1", "maxpool"], kind="eca")
    assert {n: a.position for n, a in condattn.get_added(one).items()} == {
        "maxpool_eca": "post",
        "layer3.1.eca": "standard",
    }
    with pytest.raises(condattn.ConversionError, match=r"Did you mean 'layer3\.1'"):
        condattn.add_attention(model, at="layer3.l")


def test_bad_options_name_the_valid_choices() -> None:
    model = _DropNet()
    with pytest.raises(ValueError, match="kind must be one of"):
        condattn.add_attention(model, kind="gc")
    with pytest.raises(ValueError, match="init must be one of"):
        condattn.add_attention(model, init="zeros")
    with pytest.raises(ValueError, match="r must be a positive int"):
        condattn.add_attention(model, r=0)


def test_a_model_with_one_resolution_is_refused() -> None:
    flat = nn.Sequential(
        nn.Conv2d(3, 8, 4, 4), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    with pytest.raises(condattn.ConversionError, match="at least two stages"):
        condattn.add_attention(flat)
