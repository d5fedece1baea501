"""``condattn.convert`` on the model zoo: the reference oracle, options, routing, discovery.

The strongest test is the equivalence with ``tests/reference.py``, an eager SE-R-ResNet written by
hand from the paper: the fx conversion of ``se_resnetD`` must have exactly its parameters and,
with the same weights, compute exactly its logits and aux logits (torchvision's fx-equivalence
test). The rest checks each option of :func:`condattn.convert` on tiny CIFAR ResNets.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_close,
    assert_not_close,
    assert_shape,
    assert_state_dict_equal,
    randomize_batchnorm_,
    state_dict_snapshot,
)
from reference import ref_se_r_resnet
from torch import Tensor, nn

import condattn
from condattn import CondOutput, count_params
from condattn.models import create_model
from condattn.nn import AuxHead, CondSqueezeExcite
from condattn.transform.mappings import cond_types

TINY = {"widths": (8, 8, 16, 16)}  # r=8 needs C >= 8
N = 10
PAPER_PARAMS = {34: 26_145_000, 50: 33_531_000, 101: 57_243_000}  # Table 1, to 1e3


def tiny(name: str = "se_resnet18", **kw) -> nn.Module:
    return create_model(name, num_classes=N, **{**TINY, **kw})


def x32(batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def cond_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, cond_types())}


# --- equivalence with the hand-written reference ----------------------------------------------


def to_reference_key(key: str) -> str:
    """Map a state_dict key of ``convert(se_resnetD)`` to ``RefSERResNet``'s.

    ``layer3.1.residual.4.weight`` -> ``stages.2.1.branch.4.weight``,
    ``layer3.1.attn.fc1.weight`` -> ``stages.2.1.se.w1.weight``; ``stem``, ``aux1``, ``aux2``
    and ``fc`` keep their names. The two are not in the same order (the converter appends the
    heads after ``fc``), so a positional zip would not do.
    """
    key = re.sub(r"^layer(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.", key)
    for ours, ref in [
        (".residual.", ".branch."),
        (".attn.fc1.", ".se.w1."),
        (".attn.fc2.", ".se.w2."),
        (".shortcut.", ".short."),
    ]:
        key = key.replace(ours, ref)
    return key


def load_into_reference(converted: nn.Module, reference: nn.Module) -> None:
    """Copy every parameter and buffer; strict: the key mapping must be a bijection."""
    mapped = {to_reference_key(k): v for k, v in converted.state_dict().items()}
    assert len(mapped) == len(converted.state_dict()), "key mapping is not injective"
    ref_sd = reference.state_dict()
    bad = [k for k, v in mapped.items() if k in ref_sd and ref_sd[k].shape != v.shape]
    assert not bad, f"shape mismatch after key mapping: {bad[:5]}"
    reference.load_state_dict(mapped, strict=True)


@pytest.mark.parametrize("depth", [34, 50, 101])
@pytest.mark.parametrize("conditioned", [True, False])
def test_parameter_count_equals_reference(depth: int, conditioned: bool) -> None:
    conv = condattn.convert(
        create_model(f"se_resnet{depth}", num_classes=100),
        aux_at=["layer2", "layer3"],
        conditioned=conditioned,
    )
    expected = count_params(ref_se_r_resnet(depth, conditioned=conditioned))
    assert count_params(conv) == expected
    if conditioned:  # the paper's Table 1, in M to three decimals
        assert round(expected, -3) == PAPER_PARAMS[depth]


def _check_equivalence(depth: int, *, conditioned: bool = True, **model_kw) -> None:
    torch.manual_seed(depth)
    model = randomize_batchnorm_(create_model(f"se_resnet{depth}", num_classes=100, **model_kw))
    # init="default": random T-columns, so the test sees T (zeros would hide a mis-wired T).
    conv = condattn.convert(
        model, aux_at=["layer2", "layer3"], conditioned=conditioned, init="default"
    ).eval()
    randomize_batchnorm_(conv)  # the heads' BNs too
    ref = ref_se_r_resnet(depth, conditioned=conditioned, **model_kw).eval()
    load_into_reference(conv, ref)
    x = x32()
    with torch.no_grad():
        out = conv(x)
        ref_logits, ref_aux = ref(x)
    what = f"convert(se_resnet{depth}, {model_kw}, conditioned={conditioned}) vs reference"
    assert_close(out.logits, ref_logits, atol=1e-5, what=f"{what}: logits")
    assert len(out.aux_logits) == 2
    for i, (a, b) in enumerate(zip(out.aux_logits, ref_aux), start=1):
        assert_close(a, b, atol=1e-5, what=f"{what}: aux logits {i}")


@pytest.mark.parametrize("depth", [34, 50, 101])
def test_equals_reference_full_size(depth: int) -> None:
    # ~1.5 s for depth 101 with one thread (batch 2, 32x32)
    _check_equivalence(depth)


@pytest.mark.parametrize("depth", [34, 50, 101])
@pytest.mark.parametrize("conditioned", [True, False])
def test_equals_reference_tiny_widths(depth: int, conditioned: bool) -> None:
    _check_equivalence(depth, conditioned=conditioned, widths=(8, 8, 16, 16))


# --- function preservation and the switch to SE-R -----------------------------------------------


@pytest.mark.parametrize("prefix", ["se_", "cbam_", "ca_", "eca_"])
@pytest.mark.parametrize("depth", [18, 50])
def test_zero_init_preserves_function_and_default_init_changes_it(prefix: str, depth: int) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(tiny(f"{prefix}resnet{depth}")).eval()
    x = x32()
    with torch.no_grad():
        expected = model(x)
        zeros = condattn.convert(model, ["layer2", "layer3"]).eval()
        default = condattn.convert(model, ["layer2", "layer3"], init="default").eval()
        out_zeros, out_default = zeros(x), default(x)
    cfg = condattn.get_config(zeros)
    assert cfg.feeds["layer2"] and cfg.feeds["layer3"]
    assert set(cond_modules(zeros)) == {a for v in cfg.feeds.values() for a in v}
    assert set(cond_modules(zeros)) == {
        n for n, _ in model.named_modules() if re.fullmatch(r"layer[34]\.\d+\.attn", n)
    }
    what = f"convert({prefix}resnet{depth} tiny)"
    assert_close(out_zeros.logits, expected, atol=1e-5, what=f"{what}, init='zeros'")
    assert_not_close(out_default.logits, expected, min_abs_diff=1e-6, what=f"{what}, 'default'")


def test_se_a_leaves_attention_alone() -> None:
    model = tiny().eval()
    se_a = condattn.convert(model, ["layer2", "layer3"], conditioned=False).eval()
    assert not cond_modules(se_a)
    assert condattn.get_config(se_a).feeds == {"layer2": (), "layer3": ()}
    x = x32()
    with torch.no_grad():
        assert_close(se_a(x).logits, model(x), atol=1e-6, what="SE-A logits")
    heads = [m for m in se_a.modules() if isinstance(m, AuxHead)]
    assert count_params(se_a) == count_params(model) + sum(count_params(h) for h in heads)


# --- outputs in train and eval ------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_returns_cond_output_with_aux_logits_in_train_and_eval(train: bool) -> None:
    conv = condattn.convert(tiny(), ["layer2", "layer3"]).train(train)
    out = conv(x32(3))
    assert type(out) is CondOutput
    assert isinstance(out.aux_logits, tuple) and len(out.aux_logits) == 2
    for t in (out.logits, *out.aux_logits):
        assert_shape(t, (3, N), what=f"convert(se_resnet18 tiny), train={train}")


def test_converted_model_keeps_the_training_flag() -> None:
    assert condattn.convert(tiny().train(), ["layer2"]).training
    assert not condattn.convert(tiny().eval(), ["layer2"]).training


def test_aux_model_variant_feeds_every_attention() -> None:
    model = tiny().eval()
    aux = create_model("googlenet_cifar", num_classes=N)
    conv = condattn.convert(model, [], aux_model=aux).eval()
    cfg = condattn.get_config(conv)
    attention = [n for n, m in model.named_modules() if n.endswith(".attn")]
    assert cfg.aux_model and cfg.feeds == {"aux_model": tuple(attention)}
    assert set(cond_modules(conv)) == set(attention)
    # its parameters are included, plus n x C/r per SE block
    extra = sum(N * m.fc1.out_features for m in model.modules() if hasattr(m, "fc1"))
    assert count_params(conv) == count_params(model) + count_params(aux) + extra
    x = x32()
    with torch.no_grad():
        out = conv(x)
        assert_close(out.logits, model(x), atol=1e-5, what="aux_model conversion, zero init")
        assert len(out.aux_logits) == 1
        assert_close(out.aux_logits[0], aux.eval()(x), atol=1e-5, what="aux_model logits")


def test_aux_model_with_heads_comes_first() -> None:
    aux = create_model("googlenet_cifar", num_classes=N)
    conv = condattn.convert(tiny(), ["layer3"], aux_model=aux)
    cfg = condattn.get_config(conv)
    assert list(cfg.feeds) == ["aux_model", "layer3"]
    assert cfg.feeds["layer3"] == ("layer4.0.attn", "layer4.1.attn")
    assert len(cfg.feeds["aux_model"]) == 6
    assert len(conv.eval()(x32()).aux_logits) == 2


# --- what T is: logits or probs, detached or not ------------------------------------------------


def _capture_cond(conv: nn.Module, name: str) -> list[Tensor]:
    seen: list[Tensor] = []
    conv.get_submodule(name).register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    return seen


@pytest.mark.parametrize("cond", ["logits", "probs"])
def test_cond_is_the_head_logits_or_their_softmax(cond: str) -> None:
    conv = condattn.convert(tiny(), ["layer2", "layer3"], cond=cond).eval()
    seen3 = _capture_cond(conv, "layer3.1.attn")
    seen4 = _capture_cond(conv, "layer4.0.attn")
    with torch.no_grad():
        out = conv(x32())
    for seen, aux in [(seen3, out.aux_logits[0]), (seen4, out.aux_logits[1])]:
        (t,) = seen
        expected = aux if cond == "logits" else F.softmax(aux, dim=1)
        assert_close(t, expected, what=f"T seen by the attention, cond={cond!r}")
        if cond == "probs":
            assert_close(t.sum(1), torch.ones(2), what="probs sum to 1")


def _aux_head_grads(detach_cond: bool) -> list[Tensor | None]:
    # init="default": with zero T-columns dLoss/dT is 0 even without detach.
    conv = condattn.convert(tiny(), ["layer2"], detach_cond=detach_cond, init="default")
    conv.train()
    out = conv(x32())
    out.logits.square().sum().backward()  # the main loss only
    return [p.grad for p in conv.get_submodule("aux1").parameters()]


def test_detach_cond_stops_the_main_loss_at_t() -> None:
    grads = _aux_head_grads(detach_cond=True)
    assert all(g is None or not g.any() for g in grads)


def test_without_detach_the_main_loss_trains_the_heads_through_t() -> None:
    grads = _aux_head_grads(detach_cond=False)
    assert all(g is not None for g in grads)
    assert any(g.any() for g in grads)


def test_detach_cond_keeps_the_aux_loss_gradient() -> None:
    conv = condattn.convert(tiny(), ["layer2"], detach_cond=True, init="default").train()
    conv(x32()).aux_logits[0].sum().backward()
    assert conv.aux1.fc2.weight.grad is not None and conv.aux1.fc2.weight.grad.any()


# --- routing: feeds= ----------------------------------------------------------------------------


def test_feeds_override_swaps_only_the_named_attention() -> None:
    model = tiny()
    conv = condattn.convert(model, ["layer2", "layer3"], feeds={"layer2": ["layer3.1.attn"]})
    assert condattn.get_config(conv).feeds == {"layer2": ("layer3.1.attn",), "layer3": ()}
    assert list(cond_modules(conv)) == ["layer3.1.attn"]
    assert type(conv.get_submodule("layer3.0.attn")) is type(model.layer3[0].attn)
    assert len(conv.eval()(x32()).aux_logits) == 2  # both heads still run


def test_feeds_override_accepts_prefixes_and_skips() -> None:
    conv = condattn.convert(tiny(), ["layer2"], feeds={"layer2": ["layer4"]})
    assert condattn.get_config(conv).feeds == {"layer2": ("layer4.0.attn", "layer4.1.attn")}
    assert set(cond_modules(conv)) == {"layer4.0.attn", "layer4.1.attn"}


def test_default_routing_is_the_papers() -> None:
    cfg = condattn.get_config(condattn.convert(tiny(), ["layer2", "layer3"]))
    assert cfg.feeds == {
        "layer2": ("layer3.0.attn", "layer3.1.attn"),
        "layer3": ("layer4.0.attn", "layer4.1.attn"),
    }


def test_heads_can_sit_inside_a_stage() -> None:
    conv = condattn.convert(tiny(), ["layer3.0"]).eval()
    assert condattn.get_config(conv).feeds == {
        "layer3.0": ("layer3.1.attn", "layer4.0.attn", "layer4.1.attn")
    }
    model = tiny().eval()
    conv = condattn.convert(model, ["layer3.0"]).eval()
    x = x32()
    with torch.no_grad():
        assert_close(conv(x).logits, model(x), atol=1e-5, what="head at layer3.0")


# --- discovery ----------------------------------------------------------------------------------


def test_list_stages_lists_the_stages_in_network_order() -> None:
    stages = condattn.list_stages(tiny())
    names = list(stages)
    assert [n for n in names if re.fullmatch(r"layer\d", n)] == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    positions = [names.index(f"layer{i}") for i in range(1, 5)]
    assert positions == sorted(positions)
    assert names.index("stem") < positions[0]
    assert "fc" not in stages  # 2-D output: not a place for a head
    assert stages["layer3"] == ["layer4.0.attn", "layer4.1.attn"]
    assert stages["layer4"] == []


def test_list_attention_routes_like_convert() -> None:
    model = tiny()
    listed = condattn.list_attention(model, ["layer2", "layer3"])
    assert list(listed) == [f"layer{i}.{j}.attn" for i in range(1, 5) for j in range(2)]
    for name, info in listed.items():
        assert info["kind"] == "SqueezeExcite"
        stage = int(name[5])
        assert info["fed_by"] == {3: "layer2", 4: "layer3"}.get(stage), name
    assert all(v["fed_by"] is None for v in condattn.list_attention(model).values())
    fed = condattn.get_config(condattn.convert(model, ["layer2", "layer3"])).feeds
    for head, atts in fed.items():
        assert all(listed[a]["fed_by"] == head for a in atts)


# --- the input model is never mutated -----------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_convert_never_mutates_its_input(train: bool) -> None:
    model = randomize_batchnorm_(tiny("eca_resnet18")).train(train)
    aux = create_model("googlenet_cifar", num_classes=N).train(train)
    before, aux_before = state_dict_snapshot(model), state_dict_snapshot(aux)
    types = {n: type(m) for n, m in model.named_modules()}
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    conv = condattn.convert(model, ["layer2", "layer3"], cond="probs", init="default")
    condattn.convert(model, ["layer3"], aux_model=aux)
    condattn.list_stages(model)
    condattn.list_attention(model, ["layer2"])
    assert_state_dict_equal(before, state_dict_snapshot(model), what="model after convert")
    assert_state_dict_equal(aux_before, state_dict_snapshot(aux), what="aux_model after convert")
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs
    assert all(m.training == train for m in model.modules())
    assert all(m.training == train for m in aux.modules())
    # and the conversion shares no tensor with it
    theirs = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in theirs for p in conv.parameters())


def test_forward_of_converted_model_does_not_touch_the_original() -> None:
    model = tiny().train()
    before = state_dict_snapshot(model)
    condattn.convert(model, ["layer2"]).train()(x32())  # BN running stats update in the copy
    assert_state_dict_equal(before, state_dict_snapshot(model), what="model after training step")


# --- inline SE, save/load and register_attention -----------------------------------------------


class InlineSEBlock(nn.Module):
    """A residual block whose SE is written inline in forward (no SE module)."""

    def __init__(self, c: int, *, conv: bool):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        make = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.is_conv = conv
        self.fc1, self.fc2 = make(c, c // 2), make(c // 2, c)

    def forward(self, x: Tensor) -> Tensor:
        u = F.relu(self.bn(self.conv(x)))
        if self.is_conv:
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(u.mean((2, 3), keepdim=True)))))
        else:
            z = F.adaptive_avg_pool2d(u, 1).flatten(1)
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(z)))).view(u.shape[0], -1, 1, 1)
        return x + u * s


class InlineSENet(nn.Module):
    def __init__(self, c: int = 8, n: int = N):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.b1 = InlineSEBlock(c, conv=False)
        self.b2 = InlineSEBlock(c, conv=True)
        self.b3 = InlineSEBlock(c, conv=False)
        self.fc = nn.Linear(c, n)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.b3(self.b2(self.b1(self.stem(x)))).mean((2, 3)))


def _kind_and_feeder(listed: dict[str, dict]) -> dict[str, dict]:
    """``list_attention``'s kind and fed_by (its other fields, e.g. the route, are tested apart)."""
    return {k: {f: v[f] for f in ("kind", "fed_by")} for k, v in listed.items()}


def test_inline_se_is_found_and_conditioned() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm_(InlineSENet()).eval()
    listed = _kind_and_feeder(condattn.list_attention(model, ["b1"]))
    assert listed == {
        "b1.fc1": {"kind": "inline SE", "fed_by": None},
        "b2.fc1": {"kind": "inline SE", "fed_by": "b1"},
        "b3.fc1": {"kind": "inline SE", "fed_by": "b1"},
    }
    x = x32()
    zeros = condattn.convert(model, ["b1"]).eval()
    default = condattn.convert(model, ["b1"], init="default").eval()
    assert set(cond_modules(zeros)) == {"b2.fc1", "b3.fc1"}
    # W1 gains n x C/r = 10 x 4 per fed SE
    heads = count_params(zeros.aux1)
    assert count_params(zeros) == count_params(model) + heads + 2 * N * 4
    with torch.no_grad():
        expected = model(x)
        assert_close(zeros(x).logits, expected, atol=1e-5, what="inline SE, zero init")
        assert_not_close(default(x).logits, expected, min_abs_diff=1e-6, what="inline, default")


def test_save_load_round_trip(tmp_path) -> None:
    conv = condattn.convert(tiny(), ["layer2", "layer3"], init="default", cond="probs").eval()
    path = condattn.save(conv, tmp_path / "sub" / "ckpt.pt", extra={"epoch": 3})
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = condattn.load(path, tiny()).eval()
    assert condattn.get_config(loaded) == condattn.get_config(conv)
    x = x32()
    with torch.no_grad():
        a, b = loaded(x), conv(x)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(p, q) for p, q in zip(a.aux_logits, b.aux_logits))


def test_save_load_round_trip_with_aux_model_and_concrete_args(tmp_path) -> None:
    class WithFlag(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny()

        def forward(self, x: Tensor, features: bool = False) -> Tensor:
            if features:  # Python control flow on an argument: needs concrete_args
                return self.net.layer1(self.net.stem(x))
            return self.net(x)

    kw = {"concrete_args": {"features": False}}
    aux = create_model("googlenet_cifar", num_classes=N)
    conv = condattn.convert(WithFlag(), ["net.layer3"], aux_model=aux, init="default", **kw)
    path = condattn.save(conv, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="aux_model="):
        condattn.load(path, WithFlag(), **kw)
    loaded = condattn.load(
        path, WithFlag(), aux_model=create_model("googlenet_cifar", num_classes=N), **kw
    )
    x = x32()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x).logits, conv.eval()(x).logits)


class Gate(nn.Module):
    """A user's attention type: ``x * sigmoid(w * mean(x) + b)`` per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(channels))
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.w * x.mean((2, 3)) + self.b)[:, :, None, None]


class CondGate(nn.Module):
    """Its twin, following the Cond contract: ``forward(x, cond)``, ``_scale``, ``from_module``."""

    def __init__(self, channels: int, *, cond_dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(channels))
        self.b = nn.Parameter(torch.zeros(channels))
        self.cond_fc = nn.Linear(cond_dim, channels, bias=False)  # W_T

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        return torch.sigmoid(self.w * x.mean((2, 3)) + self.b + self.cond_fc(cond))[
            :, :, None, None
        ]

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x * self._scale(x, cond)

    @classmethod
    def from_module(
        cls, src: Gate, *, channels: int, cond_dim: int, init: str = "zeros"
    ) -> CondGate:
        out = cls(src.w.numel(), cond_dim=cond_dim)
        out.load_state_dict(src.state_dict(), strict=False)
        if init == "zeros":
            nn.init.zeros_(out.cond_fc.weight)
        return out


class GateNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), Gate(8))
        self.fc = nn.Linear(8, N)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.b(self.a(x)).mean((2, 3)))


@pytest.fixture
def registered_gate():
    condattn.register_attention(Gate, CondGate)
    yield
    condattn.unregister_attention(Gate)


def test_register_attention_teaches_convert_a_new_type(registered_gate) -> None:
    model = GateNet().eval()
    listed = _kind_and_feeder(condattn.list_attention(model))
    assert listed == {"b.1": {"kind": "Gate", "fed_by": None}}
    conv = condattn.convert(model, ["a"]).eval()
    assert isinstance(conv.get_submodule("b.1"), CondGate)
    assert count_params(conv) == count_params(model) + count_params(conv.aux1) + N * 8
    x = x32()
    with torch.no_grad():
        assert_close(conv(x).logits, model(x), what="registered Gate, zero init")


def test_unregistered_type_is_not_swapped() -> None:
    assert Gate not in condattn.get_attention_mapping()
    with pytest.raises(condattn.ConversionError, match="no attention module after it"):
        condattn.convert(GateNet(), ["a"])


def test_get_attention_mapping_returns_a_copy() -> None:
    table = condattn.get_attention_mapping()
    table[Gate] = CondGate.from_module
    assert Gate not in condattn.get_attention_mapping()


def test_cond_twins_in_a_converted_model_are_the_mapped_types() -> None:
    conv = condattn.convert(tiny(), ["layer2"])
    assert all(type(m) is CondSqueezeExcite for m in cond_modules(conv).values())
