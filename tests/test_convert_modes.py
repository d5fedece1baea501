"""A converted model follows ``.train()``/``.eval()`` whatever mode ``convert`` was called in.

fx records ``self.training`` as a constant, so these tests convert in one mode and run in the
other, on models whose forward branches on ``self.training`` outside leaf modules: timm with
``drop_rate``/``drop_path_rate`` (and timm's ``BatchNormAct2d``), torchvision's EfficientNet
(stochastic depth), and a hand-written module with ``F.dropout(x, training=self.training)`` and
an ``if self.training:`` branch, on the graph route and on the in-place route. Each is checked:

- eval is deterministic and equals the source's eval (``init="zeros"``);
- train keeps the source's randomness: with the same seed it draws exactly what the source
  draws (the heads' dropout is off), and two calls differ;
- BN running statistics move in train and not in eval.

The same holds after ``torch.save`` of the whole model, ``copy.deepcopy``, ``copy.copy``,
``condattn.save``/``load``, ``logits_only`` and ``torch.compile``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import condattn
from condattn.nn import SqueezeExcite
from condattn.transform.modes import DualGraphModule
from tests.helpers import assert_close

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

HEAD = {"pool_size": 2, "width": 8, "hidden": 16}


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout, r=4)
        self.short = nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x):
        y = self.se(F.relu(self.bn(self.conv(x))))
        y = F.dropout(y, 0.3, training=self.training)  # frozen by fx: the bug this file tests
        return F.relu(self.short(x) + y)


class ModeNet(nn.Module):
    """Dropout as a function, and a branch on ``self.training`` outside any leaf."""

    def __init__(self, n: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.s1 = _Block(8, 8, 1)
        self.s2 = _Block(8, 16, 2)
        self.s3 = _Block(16, 16, 2)
        self.fc = nn.Linear(16, n)

    def forward(self, x):
        x = self.s3(self.s2(self.s1(F.relu(self.stem(x)))))
        if self.training:  # noise in training only
            x = x + 0.1 * torch.randn_like(x)
        return self.fc(F.dropout(x.mean((2, 3)), 0.2, training=self.training))


def _mode_net():
    return ModeNet(), {"aux_at": ["s2"], "aux_head": HEAD}


def _mode_net_inplace():  # the SE of s3 sits inside a leaf: the in-place route
    return ModeNet(), {"aux_at": ["s2"], "aux_head": HEAD, "leaf_modules": ["s3"]}


def _timm_seresnet():
    m = timm.create_model("seresnet18", num_classes=7, drop_rate=0.5, drop_path_rate=0.2)
    return m, {"aux_at": "auto", "aux_head": HEAD}


def _timm_seresnet_inplace():  # layer4's blocks kept whole: their SE on the in-place route
    m = timm.create_model("seresnet18", num_classes=7, drop_rate=0.5, drop_path_rate=0.2)
    leaves = [f"layer4.{i}" for i in range(2)]
    return m, {"aux_at": ["layer2", "layer3"], "aux_head": HEAD, "leaf_modules": leaves}


def _timm_efficientnet():  # BatchNormAct2d: F.batch_norm with training= traced in
    m = timm.create_model("efficientnet_b0", num_classes=7, drop_rate=0.3, drop_path_rate=0.2)
    return m, {"aux_at": "auto", "aux_head": HEAD}


def _tv_efficientnet():  # StochasticDepth: torchvision.ops.stochastic_depth(..., self.training)
    m = torchvision.models.efficientnet_b0(num_classes=7, stochastic_depth_prob=0.5)
    return m, {"aux_at": "auto", "aux_head": HEAD}


MODELS = {
    "modenet-graph": _mode_net,
    "modenet-inplace": _mode_net_inplace,
    "timm-seresnet18": _timm_seresnet,
    "timm-seresnet18-inplace": _timm_seresnet_inplace,
    "timm-efficientnet_b0": _timm_efficientnet,
    "tv-efficientnet_b0": _tv_efficientnet,
}


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _bn_means(model: nn.Module) -> list[torch.Tensor]:
    return [
        m.running_mean.clone()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]


def _build(name: str, mode: str):
    torch.manual_seed(0)
    src, kw = MODELS[name]()
    _randomize_bn(src)
    src.train(mode == "train")
    conv = condattn.convert(src, init="zeros", aux_dropout=0.0, **kw)
    return src, conv


def _x() -> torch.Tensor:
    # 64 px and 4 images: at 32 px the last stages are 1x1, and train-mode BN over 2 values per
    # channel turns the twins' rounding (a wider W1, another summation order) into O(1) changes
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _logits(model, x):
    out = model(x)
    return out.logits if isinstance(out, condattn.CondOutput) else out


def check_follows_mode(src: nn.Module, conv: nn.Module, x: torch.Tensor, *, what: str) -> None:
    """The three checks of this file on one (source, converted) pair."""
    src = copy.deepcopy(src)
    conv.eval()
    src.eval()
    before = _bn_means(conv)
    with torch.no_grad():
        a, b = _logits(conv, x), _logits(conv, x)
        ref = _logits(src, x)
    assert torch.equal(a, b), f"{what}: eval is not deterministic"
    assert_close(a, ref, what=f"{what}: eval vs the source's eval", atol=1e-5, rtol=1e-4)
    assert all(torch.equal(p, q) for p, q in zip(before, _bn_means(conv))), (
        f"{what}: BN running statistics moved in eval mode"
    )

    conv.train()
    src.train()
    with torch.no_grad():
        torch.manual_seed(1)
        t1 = _logits(conv, x)
        torch.manual_seed(1)
        s1 = _logits(src, x)
        torch.manual_seed(2)
        t2 = _logits(conv, x)
    assert not torch.equal(t1, t2), f"{what}: two train-mode calls are equal: no randomness"
    # the same random draws give the same logits (a different draw moves them by O(1))
    assert_close(t1, s1, what=f"{what}: train (seed 1) vs the source's train", atol=1e-4)
    assert any(not torch.equal(p, q) for p, q in zip(before, _bn_means(conv))), (
        f"{what}: BN running statistics did not move in train mode"
    )


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_follows_mode_whatever_mode_convert_ran_in(name, mode):
    src, conv = _build(name, mode)
    assert isinstance(conv, DualGraphModule)
    assert conv.training == (mode == "train"), "convert keeps the source's mode"
    check_follows_mode(src, conv, _x(), what=f"{name} converted in {mode} mode")


def test_graphs_differ_only_where_the_source_branches():
    _, conv = _build("modenet-graph", "eval")
    assert not conv.shares_graph
    train_code = conv.train_graph.python_code("self").src
    eval_code = conv.eval_graph.python_code("self").src
    assert "training = True" in train_code and "randn_like" in train_code
    assert "training = True" not in eval_code and "randn_like" not in eval_code
    conv.eval()
    assert conv.graph is conv.eval_graph and "randn_like" not in conv.code
    conv.train()
    assert conv.graph is conv.train_graph and "randn_like" in conv.code
    # a model without mode-dependent code outside leaves keeps one graph for both modes
    plain = condattn.models.create_model("se_resnet18", num_classes=5, widths=(8, 8, 16, 16))
    one = condattn.convert(plain, ["layer2", "layer3"], aux_head=HEAD)
    assert one.shares_graph and one.graph is one.train_graph is one.eval_graph


def _roundtrips(conv, src):
    """(what, copy of conv) for every way users copy or reload a converted model."""
    buf = io.BytesIO()
    torch.save(conv, buf)
    buf.seek(0)
    yield "torch.save/torch.load", torch.load(buf, weights_only=False)
    yield "copy.deepcopy", copy.deepcopy(conv)
    yield "copy.copy", copy.copy(conv)


@pytest.mark.parametrize("name", ["modenet-graph", "modenet-inplace", "timm-seresnet18"])
def test_copies_and_pickles_keep_both_modes(name, tmp_path):
    src, conv = _build(name, "train")
    x = _x()
    path = condattn.save(conv, tmp_path / "c.pt")  # first: copy.copy shares conv's BN buffers
    for what, other in _roundtrips(conv, src):
        assert isinstance(other, DualGraphModule), what
        assert condattn.get_config(other) == condattn.get_config(conv), what
        check_follows_mode(src, other, x, what=f"{name} after {what}")
    base, _ = MODELS[name]()
    loaded = condattn.load(path, base)
    check_follows_mode(src, loaded, x, what=f"{name} after condattn.save/load")


def test_logits_only_follows_mode():
    src, conv = _build("modenet-graph", "train")
    drop = condattn.logits_only(conv)
    assert not drop.shares_graph
    check_follows_mode(src, drop, _x(), what="logits_only(modenet)")


def test_compile_follows_mode():
    src, conv = _build("modenet-graph", "train")
    compiled = torch.compile(conv, backend="aot_eager")
    x = _x()
    compiled.eval()
    with torch.no_grad():
        a, b = compiled(x).logits, compiled(x).logits
        ref = src.eval()(x)
    assert torch.equal(a, b)
    assert_close(a, ref, what="compiled eval vs source eval", atol=1e-5)
    compiled.train()
    with torch.no_grad():
        assert not torch.equal(compiled(x).logits, compiled(x).logits)
        compiled.eval()  # BN statistics moved in train: compare with the eager model now
        assert_close(compiled(x).logits, conv(x).logits, what="compiled eval again", atol=1e-5)


def test_export_runs_the_mode_it_was_exported_in():
    _, conv = _build("modenet-graph", "train")
    x = _x()
    ep = torch.export.export(conv.eval(), (x,))
    assert_close(ep.module()(x).logits, conv(x).logits, what="exported eval", atol=1e-5)


# --- the source's public face ------------------------------------------------------------------


def test_timm_helpers_read_the_converted_model():
    from timm.data import resolve_data_config

    overlay = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.6, 0.7), "input_size": (3, 64, 64)}
    src = timm.create_model("seresnet18", num_classes=7, pretrained_cfg_overlay=overlay)
    conv = condattn.convert(src, aux_head=HEAD)
    want = resolve_data_config({}, model=src)
    assert want["mean"] == (0.1, 0.2, 0.3) and want["input_size"] == (3, 64, 64)
    assert resolve_data_config({}, model=conv) == want
    assert conv.num_classes == 7 and conv.num_features == src.num_features
    assert conv.pretrained_cfg == src.pretrained_cfg
    assert conv.get_classifier() is conv.fc  # kept: the main classifier is still there
    with pytest.raises(NotImplementedError, match=r"reset_classifier.*convert it again"):
        conv.reset_classifier(3)
    with pytest.raises(NotImplementedError, match=r"forward_features.*source model"):
        conv.forward_features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(NotImplementedError, match=r"set_grad_checkpointing.*not supported"):
        conv.set_grad_checkpointing()
    for what, other in _roundtrips(conv, src):  # the face survives copies and pickles
        assert resolve_data_config({}, model=other) == want, what
        assert other.get_classifier() is other.fc, what
        with pytest.raises(NotImplementedError, match="reset_classifier"):
            other.reset_classifier(3)
    assert resolve_data_config({}, model=condattn.logits_only(conv)) == want


def test_face_stays_on_its_own_model():
    src = timm.create_model("seresnet18", num_classes=7)
    conv = condattn.convert(src, aux_head=HEAD)
    plain = condattn.convert(ModeNet(), ["s2"], aux_head=HEAD)
    assert hasattr(conv, "get_classifier") and not hasattr(plain, "get_classifier")
    assert not hasattr(plain, "pretrained_cfg")
