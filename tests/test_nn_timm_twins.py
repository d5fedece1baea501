"""The Cond twins of timm's other channel-attention types, built from timm modules.

Each case is one timm source configuration (tiny widths, 8x8 or 16x16 inputs). For every case:
zero-init function preservation (eval and train mode, any T), the output shape, T changing the
output once its columns are non-zero, a gradient for every parameter, the exact parameter
delta (n times the width of the map T feeds) and clear errors for wrong sources.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from condattn.analysis import record_gates
from condattn.nn import (
    CondCeca,
    CondGatherExcite,
    CondGlobalContext,
    CondLightCbam,
    CondSelectiveKernel,
    CondSelectiveKernelAttn,
    CondSplitAttn,
)
from tests.helpers import (
    assert_all_params_have_grad,
    assert_close,
    assert_not_close,
    assert_shape,
    randomize_batchnorm_,
)
from tests.strategies import batch_sizes, cond_dims, seeds, t_scales

pytest.importorskip("timm")

from timm.layers.cbam import CbamModule, LightCbamModule
from timm.layers.create_conv2d import create_conv2d
from timm.layers.eca import CecaModule, EcaModule
from timm.layers.gather_excite import GatherExcite
from timm.layers.global_context import GlobalContext
from timm.layers.helpers import make_divisible
from timm.layers.mlp import ConvMlp
from timm.layers.selective_kernel import SelectiveKernel
from timm.layers.split_attn import SplitAttn


def timm_gather_excite(
    channels: int,
    *,
    extent: int = 0,
    use_mlp: bool = True,
    extra_params: bool = False,
    feat_size: tuple[int, int] | None = None,
    rd_channels: int | None = None,
    add_maxpool: bool = False,
) -> nn.Module:
    """timm's ``GatherExcite`` as its constructor means to build it.

    timm 1.0.31's constructor passes ``*dd`` positionally to ``ConvMlp`` / ``create_conv2d`` and
    so raises TypeError whenever ``use_mlp`` or ``extra_params`` is set. Then we build it with
    neither and attach the parts that constructor would have made (same layers, same order).
    """
    kw = {"extent": extent, "add_maxpool": add_maxpool, "rd_channels": rd_channels}
    try:
        return GatherExcite(
            channels, use_mlp=use_mlp, extra_params=extra_params, feat_size=feat_size, **kw
        )
    except TypeError:
        pass
    m = GatherExcite(channels, use_mlp=False, **kw)
    if extra_params:
        gather = nn.Sequential()
        if extent == 0:
            conv = create_conv2d(channels, channels, kernel_size=feat_size, depthwise=True)
            gather.add_module("conv1", conv)
            gather.add_module("norm1", nn.BatchNorm2d(channels))
        else:
            num_conv = int(math.log2(extent))
            for i in range(num_conv):
                conv = create_conv2d(channels, channels, kernel_size=3, stride=2, depthwise=True)
                gather.add_module(f"conv{i + 1}", conv)
                gather.add_module(f"norm{i + 1}", nn.BatchNorm2d(channels))
                if i != num_conv - 1:
                    gather.add_module(f"act{i + 1}", nn.ReLU(inplace=True))
        m.gather = gather
    if use_mlp:
        rd = rd_channels or make_divisible(channels / 16, 1, round_limit=0.0)
        m.mlp = ConvMlp(channels, rd, act_layer=nn.ReLU)
    return m


@dataclass(frozen=True)
class Case:
    """One timm source configuration and what its twin must add."""

    id: str
    twin: type[nn.Module]
    build: Callable[[], nn.Module]
    channels: int  # C of the input
    hw: int  # input H = W
    width: Callable[[nn.Module], int]  # the width of the map(s) T feeds: delta = n * width


def _gc_width(m: nn.Module) -> int:
    return sum(x.fc1.out_channels for x in (m.mlp_add, m.mlp_scale) if x is not None)


CASES = [
    Case("ceca-adaptive", CondCeca, lambda: CecaModule(16), 16, 8, lambda m: 16),
    Case(
        "ceca-k5-bias",
        CondCeca,
        lambda: CecaModule(kernel_size=5, act_layer=nn.ReLU),
        12,
        8,
        lambda m: 12,
    ),
    Case(
        "ge-global-mlp",
        CondGatherExcite,
        lambda: timm_gather_excite(16, rd_channels=4),
        16,
        8,
        lambda m: 4,
    ),
    Case(
        "ge-global-free-maxpool",
        CondGatherExcite,
        lambda: timm_gather_excite(16, use_mlp=False, add_maxpool=True),
        16,
        8,
        lambda m: 16,
    ),
    Case(
        "ge-extent2-mlp-maxpool",
        CondGatherExcite,
        lambda: timm_gather_excite(16, extent=2, add_maxpool=True),
        16,
        8,
        lambda m: 1,  # 16 / 16
    ),
    Case(
        "ge-extent4-free",
        CondGatherExcite,
        lambda: timm_gather_excite(8, extent=4, use_mlp=False),
        8,
        16,
        lambda m: 8,
    ),
    Case(
        "ge-params-extent4-mlp",
        CondGatherExcite,
        lambda: timm_gather_excite(16, extent=4, extra_params=True, rd_channels=3),
        16,
        16,
        lambda m: 3,
    ),
    Case(
        "ge-params-global",
        CondGatherExcite,
        lambda: timm_gather_excite(8, extra_params=True, feat_size=(8, 8), rd_channels=2),
        8,
        8,
        lambda m: 2,
    ),
    Case("gc-scale-attn", CondGlobalContext, lambda: GlobalContext(16), 16, 8, _gc_width),
    Case(
        "gc-add-and-scale",
        CondGlobalContext,
        lambda: GlobalContext(16, fuse_add=True, rd_ratio=1 / 4),
        16,
        8,
        _gc_width,
    ),
    Case(
        "gc-add-mean",  # timm's 'gca' without attention pooling
        CondGlobalContext,
        lambda: GlobalContext(24, use_attn=False, fuse_add=True, fuse_scale=False),
        24,
        8,
        _gc_width,
    ),
    Case(
        "lcbam-default",
        CondLightCbam,
        lambda: LightCbamModule(16, rd_ratio=1 / 4),
        16,
        8,
        lambda m: 4,
    ),
    Case(
        "lcbam-bias-k3",
        CondLightCbam,
        lambda: LightCbamModule(24, rd_channels=5, mlp_bias=True, spatial_kernel_size=3),
        24,
        8,
        lambda m: 5,
    ),
    Case("sk-default", CondSelectiveKernel, lambda: SelectiveKernel(16, 24), 16, 8, lambda m: 8),
    Case(
        "sk-3paths-nosplit-stride2",
        CondSelectiveKernel,
        lambda: SelectiveKernel(
            12, 16, kernel_size=[3, 5, 7], split_input=False, stride=2, rd_channels=6
        ),
        12,
        8,
        lambda m: 6,
    ),
    Case(
        "sk-no-keep3x3-groups2",
        CondSelectiveKernel,
        lambda: SelectiveKernel(16, 16, keep_3x3=False, groups=2, rd_channels=4),
        16,
        8,
        lambda m: 4,
    ),
    Case(
        "split-r2-bn",
        CondSplitAttn,
        lambda: SplitAttn(16, 16, norm_layer=nn.BatchNorm2d),
        16,
        8,
        lambda m: 32,  # make_divisible(16 * 2 / 4, min_value=32)
    ),
    Case(
        "split-r1-stride2",
        CondSplitAttn,
        lambda: SplitAttn(16, 8, radix=1, stride=2),
        16,
        8,
        lambda m: 32,
    ),
    Case(
        "split-r4-card2",
        CondSplitAttn,
        lambda: SplitAttn(16, 8, radix=4, groups=2, rd_channels=3, norm_layer=nn.BatchNorm2d),
        16,
        8,
        lambda m: 12,  # rd_channels * radix
    ),
]
CASE_IDS = [c.id for c in CASES]


@torch.no_grad()
def _source(case: Case) -> nn.Module:
    """The timm module with every weight moved off its init (and non-trivial BN statistics)."""
    m = case.build()
    for p in m.parameters():
        p.add_(0.3 * torch.randn_like(p))
    return randomize_batchnorm_(m)


def _twin(case: Case, src: nn.Module, cond_dim: int, *, init: str = "zeros") -> nn.Module:
    return case.twin.from_module(src, channels=case.channels, cond_dim=cond_dim, init=init)


def _x(case: Case, batch: int) -> torch.Tensor:
    return torch.randn(batch, case.channels, case.hw, case.hw)


def _what(case: Case, cond_dim: int, extra: str = "") -> str:
    return f"{case.twin.__name__}.from_module(<{case.id}>, cond_dim={cond_dim}){extra}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@given(seed=seeds, batch=batch_sizes, cond_dim=cond_dims, t_scale=t_scales)
def test_zero_init_computes_the_source_function_in_eval(case, seed, batch, cond_dim, t_scale):
    torch.manual_seed(seed)
    src = _source(case).eval()
    twin = _twin(case, src, cond_dim).eval()
    x, t = _x(case, batch), t_scale * torch.randn(batch, cond_dim)
    with torch.no_grad():
        expected = src(x.clone())
        out = twin(x.clone(), t)
    assert_shape(out, expected.shape, what=_what(case, cond_dim, " output shape"))
    assert_close(out, expected, what=_what(case, cond_dim, " vs source, eval"), atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_zero_init_computes_the_source_function_in_train(case):
    src = _source(case).train()
    twin = _twin(case, src, 4).train()
    x, t = _x(case, 3), 100 * torch.randn(3, 4)
    assert_close(twin(x.clone(), t), src(x.clone()), what=_what(case, 4, " train"), atol=1e-5)
    means = [[b for n, b in m.named_buffers() if n.endswith("running_mean")] for m in (twin, src)]
    for a, b in zip(*means, strict=True):  # BN statistics moved the same way
        assert_close(a, b, what=f"{_what(case, 4)} BN running_mean after a train step", atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_output_shape_is_the_sources(case):
    src = _source(case).eval()
    twin = _twin(case, src, 3).eval()
    x = _x(case, 2)
    out = twin(x, torch.randn(2, 3))
    assert_shape(out, src(x).shape, what=_what(case, 3, " output"))
    if case.twin not in (CondSelectiveKernel, CondSplitAttn):  # gates: a tensor like x
        assert_shape(out, x.shape, what=_what(case, 3, " output like x"))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_nonzero_t_columns_change_the_output(case):
    src = _source(case).eval()
    twin = _twin(case, src, 5, init="default").eval()
    x = _x(case, 2)
    t1, t2 = 3 * torch.randn(2, 5), 3 * torch.randn(2, 5)
    with torch.no_grad():
        y1, y2, y0 = twin(x, t1), twin(x, t2), src(x)
    assert_not_close(y1, y2, what=_what(case, 5, ", init='default': T1 vs T2"), min_abs_diff=1e-5)
    assert_not_close(y1, y0, what=_what(case, 5, ", init='default' vs source"), min_abs_diff=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_parameter_gets_a_gradient(case):
    src = _source(case)
    twin = _twin(case, src, 4, init="default").train()
    x = _x(case, 3)
    out = twin(x, torch.randn(3, 4))
    (out * torch.randn_like(out)).sum().backward()
    what = _what(case, 4, ", init='default', train backward")
    assert_all_params_have_grad(twin, what=what, allow_zero=True)
    zero = [n for n, p in twin.named_parameters() if not p.grad.any() and n not in ZERO_GRAD_OK]
    assert not zero, f"{what}: all-zero grad: {zero}"


# GlobalContext's attention pooling is a softmax over positions, which is shift-invariant: the
# bias of conv_attn gets an exactly zero gradient, in timm's module as in the twin.
ZERO_GRAD_OK = frozenset({"conv_attn.bias"})


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("cond_dim", [1, 7])
def test_parameter_delta_is_n_times_the_width_t_feeds(case, cond_dim):
    src = case.build()
    twin = _twin(case, src, cond_dim)
    n_src = sum(p.numel() for p in src.parameters())
    n_twin = sum(p.numel() for p in twin.parameters())
    assert n_twin - n_src == cond_dim * case.width(src), _what(case, cond_dim, " param delta")
    # the buffers (BN statistics) are the source's
    assert sum(b.numel() for b in twin.buffers()) == sum(b.numel() for b in src.buffers())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_default_init_draws_exactly_the_t_columns_that_zeros_zeroes(case):
    src = case.build()
    zero, default = _twin(case, src, 3), _twin(case, src, 3, init="default")
    changed = 0
    for (name, a), (_, b) in zip(zero.named_parameters(), default.named_parameters(), strict=True):
        differ = a != b
        assert not bool(a[differ].any()), f"{_what(case, 3)}: {name} T-part not zero"
        assert bool((b[differ].abs() <= 1.0).all()), f"{name}: default beyond 1/sqrt(fan_in)"
        changed += int(differ.sum())
    assert changed == 3 * case.width(src), f"{_what(case, 3)}: init='default' drew {changed}"


def test_record_gates_sees_a_4d_gate_per_twin():
    for case in (CASES[0], CASES[2], CASES[8], CASES[11], CASES[13], CASES[16]):
        twin = _twin(case, _source(case), 3).eval()
        with record_gates(twin) as rec, torch.no_grad():
            twin(_x(case, 2), torch.randn(2, 3))
        gates = [s for v in rec.values() for s in v]
        assert len(gates) == 1 and gates[0].dim() == 4, (case.id, [g.shape for g in gates])


def test_selective_kernel_attn_twin_returns_the_path_weights():
    src = _source(CASES[13]).eval().attn
    twin = CondSelectiveKernelAttn.from_module(src, channels=24, cond_dim=3).eval()
    v = torch.randn(2, 2, 24, 8, 8)
    with torch.no_grad():
        assert_close(twin(v, torch.randn(2, 3)), src(v), what="CondSelectiveKernelAttn vs source")
    with pytest.raises(ValueError, match=r"stacked paths"):
        twin(torch.randn(2, 24, 8, 8), torch.randn(2, 3))


# --- errors ---------------------------------------------------------------------------------

WRONG = [
    (CondCeca, EcaModule(16)),
    (CondGatherExcite, nn.Conv2d(16, 16, 1)),
    (CondGlobalContext, LightCbamModule(16)),
    (CondLightCbam, CbamModule(16)),
    (CondSelectiveKernel, SplitAttn(16, 16)),
    (CondSelectiveKernelAttn, SelectiveKernel(16, 16)),
    (CondSplitAttn, SelectiveKernel(16, 16)),
]


@pytest.mark.parametrize("twin, src", WRONG, ids=[w[0].__name__ for w in WRONG])
def test_wrong_source_type_is_a_type_error_naming_both(twin, src):
    with pytest.raises(TypeError, match=rf"{twin.__name__}.*expects.*got {type(src).__name__}"):
        twin.from_module(src, channels=16, cond_dim=3)


def test_unsupported_source_options_are_type_errors_naming_the_option():
    with pytest.raises(TypeError, match=r"fuse_add=False, fuse_scale=False"):
        CondGlobalContext.from_module(
            GlobalContext(16, fuse_add=False, fuse_scale=False), channels=16, cond_dim=3
        )
    ge = timm_gather_excite(16, use_mlp=False)
    ge.mlp = nn.Linear(16, 16)
    with pytest.raises(TypeError, match=r"GatherExcite.mlp must be timm's ConvMlp"):
        CondGatherExcite.from_module(ge, channels=16, cond_dim=3)
    sk = SelectiveKernel(16, 16)
    sk.attn = nn.Identity()
    with pytest.raises(TypeError, match=r"SelectiveKernel.attn must be"):
        CondSelectiveKernel.from_module(sk, channels=16, cond_dim=3)


def test_channels_are_required_for_ceca_and_checked_elsewhere():
    with pytest.raises(ValueError, match=r"channels"):
        CondCeca.from_module(CecaModule(16), cond_dim=3)
    with pytest.raises(ValueError, match=r"channels=8.*16"):
        CondLightCbam.from_module(LightCbamModule(16), channels=8, cond_dim=3)
    with pytest.raises(ValueError, match=r"cond_dim"):
        CondSplitAttn.from_module(SplitAttn(16, 16), channels=16, cond_dim=0)
    with pytest.raises(ValueError, match=r"init must be one of"):
        CondSelectiveKernel.from_module(SelectiveKernel(16, 16), channels=16, cond_dim=2, init="x")


def test_the_twins_import_and_build_without_timm():
    """timm is optional: with it blocked, the twins import, build from scratch and run, and
    from_module says timm is missing."""
    code = """
import sys
sys.modules["timm"] = None  # any "import timm..." now raises ImportError
import torch
from torch import nn
from condattn.nn import (CondCeca, CondGatherExcite, CondGlobalContext, CondLightCbam,
                         CondSelectiveKernel, CondSplitAttn)
x, t = torch.randn(2, 16, 8, 8), torch.randn(2, 3)
paths = [nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 3, padding=2, dilation=2)]
twins = [CondCeca(16, cond_dim=3), CondGatherExcite(16, cond_dim=3, extent=2),
         CondGlobalContext(16, cond_dim=3, fuse_add=True), CondLightCbam(16, cond_dim=3, r=4),
         CondSelectiveKernel(paths, in_channels=16, out_channels=16, cond_dim=3),
         CondSplitAttn(16, cond_dim=3)]
for m in twins:
    assert m(x, t).shape == x.shape, type(m).__name__
try:
    CondCeca.from_module(nn.Conv1d(1, 1, 3), channels=16, cond_dim=3)
except TypeError as e:
    assert "timm is not installed" in str(e), e
else:
    raise AssertionError("no TypeError")
assert "timm" not in sys.modules or sys.modules["timm"] is None
print("ok")
"""
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@given(seed=seeds, cond_dim=cond_dims, extent=st.sampled_from([0, 2, 4]), mlp=st.booleans())
def test_gather_excite_twin_with_drawn_options(seed, cond_dim, extent, mlp):
    torch.manual_seed(seed)
    case = Case(
        "drawn",
        CondGatherExcite,
        lambda: timm_gather_excite(8, extent=extent, use_mlp=mlp),
        8,
        16,
        lambda m: 0,
    )
    src = _source(case).eval()
    twin = _twin(case, src, cond_dim).eval()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        out = twin(x, 10 * torch.randn(2, cond_dim))
    assert_close(out, src(x), what=_what(case, cond_dim, f" extent={extent}, mlp={mlp}"), atol=1e-5)
