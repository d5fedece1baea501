"""The in-place route of ``condattn.convert``: attention inside modules that fx keeps whole.

Leaves come from ``leaf_modules=`` (names or types: needed for blocks with data-dependent Python)
and from timm's not-traceable blocks (the NF family's ``NormFreeBlock``). The strongest check is
that the in-place route computes *exactly* what the graph route computes, with the same
state_dict keys, on a model that both can convert; the rest checks function preservation,
save/load, deepcopy and pickling, gradients, DDP, torch.compile and the errors.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.distributed as dist
from helpers import (
    assert_all_params_have_grad,
    assert_close,
    assert_not_close,
    randomize_batchnorm_,
)
from torch import Tensor, nn

import condattn
from condattn import ConversionError
from condattn.models import create_model
from condattn.nn import CondSqueezeExcite, SqueezeExcite
from condattn.transform.inplace import InPlaceCond, inplace_modules
from condattn.transform.mappings import cond_types

N = 10


def x32(batch: int = 2, size: int = 32) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


class Gated(nn.Module):
    """A residual block with SE whose forward has data-dependent Python: fx cannot trace it."""

    def __init__(self, c_in: int, c: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c, 3, stride, 1)
        self.bn = nn.BatchNorm2d(c)
        self.se = SqueezeExcite(c, r=2)
        self.spare = SqueezeExcite(c, r=2)  # never called: not attention of this network
        self.short = nn.Conv2d(c_in, c, 1, stride) if (c_in, stride) != (c, 1) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.se(torch.relu(self.bn(self.conv(x))))
        if bool(out.abs().max() > 1e6):  # data-dependent Python control flow
            out = out / 2
        return torch.relu(out + self.short(x))


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = Gated(8, 8, 1)
        self.layer2 = Gated(8, 16, 2)
        self.layer3 = Gated(16, 16, 2)
        self.layer4 = Gated(16, 32, 2)
        self.fc = nn.Linear(32, N)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def gated() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm_(GatedNet()).eval()


AUX_AT = ["layer2", "layer3"]


def _converted(model: nn.Module, **kw) -> nn.Module:
    """The in-place conversion; the uncalled ``spare`` SEs are frozen (they get no gradient)."""
    conv = condattn.convert(model, AUX_AT, leaf_modules=[Gated], **kw)
    for name, m in conv.named_modules():
        if name.endswith(".spare"):
            m.requires_grad_(False)
    return conv


# --- discovery, routes, function ---------------------------------------------------------------


def test_attention_inside_a_leaf_is_found_and_routed_in_place(gated) -> None:
    with pytest.raises(ConversionError, match="could not trace"):
        condattn.convert(gated, AUX_AT)
    listed = condattn.list_attention(gated, AUX_AT, leaf_modules=[Gated])
    assert list(listed) == [f"layer{i}.se" for i in (1, 2, 3, 4)]  # not the uncalled "spare"
    assert {v["route"] for v in listed.values()} == {"in-place"}
    assert {v["kind"] for v in listed.values()} == {"SqueezeExcite"}
    assert [v["fed_by"] for v in listed.values()] == [None, None, "layer2", "layer3"]

    conv = _converted(gated)
    cfg = condattn.get_config(conv)
    assert cfg.aux_at == ("layer2", "layer3")
    assert cfg.feeds == {"layer2": ("layer3.se",), "layer3": ("layer4.se",)}
    assert cfg.routes == {"layer3.se": "in-place", "layer4.se": "in-place"}
    assert set(inplace_modules(conv)) == {"layer3.se", "layer4.se"}
    assert isinstance(conv.layer3.se, CondSqueezeExcite)  # an in-place twin is still its twin
    assert type(conv.layer1.se) is SqueezeExcite and type(conv.layer3.spare) is SqueezeExcite


def test_graph_route_is_recorded_for_traced_attention() -> None:
    model = create_model("se_resnet18", num_classes=N, widths=(8, 8, 16, 16))
    cfg = condattn.get_config(condattn.convert(model, ["layer3"]))
    assert set(cfg.routes) == {"layer4.0.attn", "layer4.1.attn"}
    assert set(cfg.routes.values()) == {"graph"}
    listed = condattn.list_attention(model, ["layer3"])
    assert {v["route"] for v in listed.values()} == {"graph"}


def test_zero_init_keeps_the_function_and_default_init_changes_it(gated) -> None:
    x = x32()
    with torch.no_grad():
        expected = gated(x)
        out = _converted(gated).eval()(x)
        changed = _converted(gated, init="default").eval()(x).logits
    assert len(out.aux_logits) == 2
    assert_close(out.logits, expected, atol=1e-6, what="in-place convert(GatedNet), zero init")
    assert_not_close(changed, expected, min_abs_diff=1e-6, what="in-place, default init")


def _se_resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm_(create_model("se_resnet18", num_classes=N, widths=(8, 8, 16, 16)))


def test_in_place_route_computes_exactly_what_the_graph_route_computes() -> None:
    """Same model, same weights: ``layer3.0`` and ``layer4`` kept whole (in place) vs traced."""
    base = _se_resnet()
    kw = {"aux_at": ["layer2", "layer3"], "init": "default", "aux_dropout": 0.0}
    graph = condattn.convert(base, **kw)
    inplace = condattn.convert(base, leaf_modules=["layer3.0", "layer4"], **kw)
    routes = condattn.get_config(inplace).routes
    assert routes == {
        "layer3.0.attn": "in-place",
        "layer3.1.attn": "graph",
        "layer4.0.attn": "in-place",
        "layer4.1.attn": "in-place",
    }
    assert list(inplace.state_dict()) == list(graph.state_dict())  # the same keys, same order
    inplace.load_state_dict(graph.state_dict())
    x = x32()
    for mode in ("eval", "train"):
        g, p = graph.train(mode == "train")(x), inplace.train(mode == "train")(x)
        assert_close(p.logits, g.logits, atol=1e-6, what=f"in-place vs graph logits, {mode}")
        for a, b in zip(p.aux_logits, g.aux_logits, strict=True):
            assert_close(a, b, atol=1e-6, what=f"in-place vs graph aux logits, {mode}")
    (g.logits.sum() + sum(t.sum() for t in g.aux_logits)).backward()
    (p.logits.sum() + sum(t.sum() for t in p.aux_logits)).backward()
    grads = dict(graph.named_parameters())
    for name, param in inplace.named_parameters():
        assert_close(param.grad, grads[name].grad, atol=1e-5, what=f"grad of {name}")


def test_every_parameter_gets_a_gradient_in_train_mode(gated) -> None:
    conv = _converted(gated, init="default").train()
    out = conv(x32(4))
    (out.logits.sum() + sum(t.sum() for t in out.aux_logits)).backward()
    assert_all_params_have_grad(conv, what="in-place convert(GatedNet), train mode")


# --- timm's not-traceable blocks -----------------------------------------------------------------


@torch.no_grad()
def _trained_like(model: nn.Module) -> nn.Module:
    """Give the all-zero parameters values: fresh NF blocks zero ``conv3.gain``, which would
    multiply the attention's output (and so any effect of T) by 0."""
    for p in model.parameters():
        if not p.any():
            p.normal_(0.0, 0.1)
    return model


def test_timm_nf_model_converts_in_place_and_keeps_its_function() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _trained_like(timm.create_model("test_nfnet", num_classes=N)).eval()
    x = x32(2, 64)
    conv = condattn.convert(model, example_input=torch.zeros(1, 3, 64, 64)).eval()
    cfg = condattn.get_config(conv)
    assert cfg.feeds and all(cfg.feeds.values())
    assert set(cfg.routes.values()) == {"in-place"}
    swapped = {n for n, m in conv.named_modules() if isinstance(m, cond_types())}
    assert swapped == set(cfg.routes)
    default = condattn.convert(model, init="default", example_input=torch.zeros(1, 3, 64, 64))
    with torch.no_grad():
        expected = model(x)
        out = conv(x).logits
        changed = default.eval()(x).logits
    scale = float(expected.abs().max())
    assert_close(out, expected, atol=1e-4 * scale, rtol=0, what="convert(test_nfnet), zero init")
    assert_not_close(changed, expected, min_abs_diff=1e-7, what="convert(test_nfnet), default")


# --- persistence and copies --------------------------------------------------------------------


def test_save_load_round_trip(gated, tmp_path) -> None:
    conv = _converted(gated, init="default").eval()
    path = condattn.save(conv, tmp_path / "m.pt")
    with pytest.raises(ConversionError, match="could not trace"):  # types are not saved
        condattn.load(path, GatedNet())
    loaded = condattn.load(path, GatedNet(), leaf_modules=[Gated]).eval()
    assert condattn.get_config(loaded).routes == condattn.get_config(conv).routes
    x = x32()
    with torch.no_grad():
        assert_close(loaded(x).logits, conv(x).logits, atol=0, rtol=0, what="condattn.load")


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_copies_keep_the_route(gated, how: str) -> None:
    conv = _converted(gated, init="default").eval()
    if how == "deepcopy":
        other = copy.deepcopy(conv)
    else:
        buf = io.BytesIO()
        torch.save(conv, buf)
        buf.seek(0)
        other = torch.load(buf, weights_only=False)
    twins = inplace_modules(other)
    assert set(twins) == {"layer3.se", "layer4.se"}
    assert all(tw is not conv.get_submodule(n) for n, tw in twins.items())
    x = x32()
    with torch.no_grad():
        assert_close(other(x).logits, conv(x).logits, atol=0, rtol=0, what=f"{how} copy")
        other.layer4.se.fc1.weight.add_(1.0)  # the copy's twin is the one its forward uses
        assert_not_close(other(x).logits, conv(x).logits, min_abs_diff=1e-6, what=how)


def test_ddp_one_process_trains_the_in_place_twins(gated, tmp_path) -> None:
    from torch.nn.parallel import DistributedDataParallel

    init = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        conv = _converted(gated, init="default").train()
        ddp = DistributedDataParallel(conv)
        out = ddp(x32(4))
        (out.logits.sum() + sum(t.sum() for t in out.aux_logits)).backward()
    finally:
        dist.destroy_process_group()
    assert_all_params_have_grad(conv, what="DDP(in-place convert(GatedNet))")


def test_torch_compile_eager_backend_runs(gated) -> None:
    """dynamo traces ``call_leaf`` and the T slot writes (no graph break with torch 2.14)."""
    torch._dynamo.reset()
    conv = _converted(gated, init="default").eval()
    compiled = torch.compile(conv, backend="eager")
    x = x32()
    with torch.no_grad():
        assert_close(compiled(x).logits, conv(x).logits, atol=1e-6, what="compile, eval")


@pytest.mark.slow  # dynamo traces forward and backward: ~15 s on a shared CPU
def test_torch_compile_eager_backend_trains(gated) -> None:
    torch._dynamo.reset()
    conv = _converted(gated, init="default").train()
    out = torch.compile(conv, backend="eager")(x32())
    (out.logits.sum() + sum(t.sum() for t in out.aux_logits)).backward()
    assert_all_params_have_grad(conv, what="torch.compile(in-place convert(GatedNet))")


# --- T exists only while its leaf runs ---------------------------------------------------------


def test_block_called_outside_the_model_raises_and_explicit_t_works(gated) -> None:
    conv = _converted(gated).eval()
    feature = torch.randn(2, 16, 8, 8)
    with pytest.raises(RuntimeError, match=r"'layer4\.se' is conditioned in place"):
        conv.layer4(feature)
    out = conv.layer4.se(torch.randn(2, 32, 4, 4), torch.randn(2, N))  # forward(x, cond) stays
    assert out.shape == (2, 32, 4, 4)


def test_no_t_is_left_behind_after_calls_and_errors(gated) -> None:
    conv = _converted(gated).eval()
    twins = list(inplace_modules(conv).values())
    x = x32()
    with torch.no_grad():
        first = conv(x).logits
        second = conv(x).logits  # the model called twice: same result
    assert torch.equal(first, second)
    assert all(tw.__dict__.get("_condattn_cond") is None for tw in twins)

    def boom(module, args):
        raise ValueError("inside the leaf")

    handle = conv.layer4.conv.register_forward_pre_hook(boom)
    with pytest.raises(ValueError, match="inside the leaf"):
        conv(x)
    handle.remove()
    assert all(tw.__dict__.get("_condattn_cond") is None for tw in twins)
    assert all(isinstance(tw, InPlaceCond) for tw in twins)
