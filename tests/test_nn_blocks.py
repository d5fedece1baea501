"""Properties of the plain attention blocks and their result-conditioned twins (Eqs. 1-6).

Each property runs for every kind (SE, CBAM, coordinate attention, ECA) over hypothesis-drawn
shapes, channels, r and cond_dim; a few fixed, well-conditioned configs check the properties
that a randomly drawn config can defeat by chance (a hidden ReLU unit dead for every sample).
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    assert_all_params_have_grad,
    assert_close,
    assert_in_range,
    assert_not_close,
    assert_shape,
    assert_state_dict_equal,
    randomize_batchnorm_,
    state_dict_snapshot,
)
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    COND_BLOCKS,
    KINDS,
    PLAIN_BLOCKS,
    BlockCase,
    BlockConfig,
    batch_sizes,
    block_cases,
    block_configs,
    block_pair,
    make_block,
    seeds,
    spatial_sizes,
    t_scales,
)
from torch import Tensor, nn

from condattn.nn import (
    Cbam,
    CondCbam,
    CondCoordAttn,
    CondEca,
    CondEffectiveSE,
    CondLinear,
    CoordAttn,
    Eca,
    SqueezeExcite,
)
from condattn.profiling import count_params

kinds = pytest.mark.parametrize("kind", KINDS)


# --- building blocks for the tests ------------------------------------------------------------


def build(
    case: BlockCase, *, init: str = "zeros", t_scale: float = 1.0
) -> tuple[nn.Module, nn.Module, Tensor, Tensor]:
    """``(plain, twin, x, t)`` for a drawn case, all from ``case.seed``.

    The source's BatchNorms get random statistics before conversion, so the twin must copy them.
    """
    cfg = case.config
    torch.manual_seed(case.seed)
    plain = randomize_batchnorm_(make_block(cfg.kind, cfg.channels, cfg.r))
    twin = COND_BLOCKS[cfg.kind].from_module(plain, cond_dim=cfg.cond_dim, init=init)
    x = torch.randn(case.x_shape)
    t = torch.randn(case.t_shape) * t_scale
    return plain, twin, x, t


def describe(case: BlockCase, *, init: str = "zeros") -> str:
    cfg = case.config
    plain = PLAIN_BLOCKS[cfg.kind].__name__
    twin = COND_BLOCKS[cfg.kind].__name__
    return (
        f"{twin}.from_module({plain}({cfg.channels}, r={cfg.r}), cond_dim={cfg.cond_dim}, "
        f"init={init!r}) on x{case.x_shape}"
    )


def expected_hidden_width(kind: str, channels: int, r: int) -> int:
    """The width of the layer that reads T, so the twin has ``cond_dim x this`` more params."""
    return {
        "se": channels // r,  # W1: C -> C/r
        "cbam": channels // r,  # the shared MLP's W1
        "coord": max(8, channels // r),  # mip = max(min_channels=8, C // r)
        "eca": channels,  # W_T: n -> C, added to the conv's logits
    }[kind]


def t_columns(twin: nn.Module) -> Tensor:
    """The weights that multiply T."""
    if isinstance(twin, CondEca):
        return twin.cond_fc.weight
    if isinstance(twin, CondCoordAttn):
        return twin.conv1.weight[:, : twin.cond_dim]
    return twin.fc1.weight[:, : twin.cond_dim]


def weighted_sum(out: Tensor) -> Tensor:
    """A scalar that depends on every output element (a plain sum can cancel through BN)."""
    return (out * torch.linspace(-1.0, 2.0, out.numel()).reshape(out.shape)).sum()


# --- shapes ----------------------------------------------------------------------------------


@kinds
@given(data=st.data())
def test_plain_block_and_twin_keep_the_input_shape(kind: str, data: st.DataObject) -> None:
    case = data.draw(block_cases(kind))
    plain, twin, x, t = build(case)
    plain.eval(), twin.eval()
    assert_shape(plain(x), x.shape, what=f"{PLAIN_BLOCKS[kind].__name__}(x) on x{case.x_shape}")
    assert_shape(twin(x, t), x.shape, what=f"{describe(case)}: twin(x, t)")


@kinds
@given(data=st.data())
def test_directly_built_twin_keeps_the_input_shape_in_train_mode(
    kind: str, data: st.DataObject
) -> None:
    case = data.draw(block_cases(kind, train_safe=True))
    cfg = case.config
    torch.manual_seed(case.seed)
    kw = {} if kind == "eca" else {"r": cfg.r}
    twin = COND_BLOCKS[kind](cfg.channels, cond_dim=cfg.cond_dim, **kw).train()
    out = twin(torch.randn(case.x_shape), torch.randn(case.t_shape))
    assert_shape(out, case.x_shape, what=f"{COND_BLOCKS[kind].__name__}(...)(x, t), train mode")


# --- the zero-init twin is its source --------------------------------------------------------


@kinds
@given(data=st.data(), t_scale=t_scales)
def test_zero_init_twin_equals_source_for_any_t_in_eval_mode(
    kind: str, data: st.DataObject, t_scale: float
) -> None:
    case = data.draw(block_cases(kind))
    plain, twin, x, t = build(case, t_scale=t_scale)
    plain.eval(), twin.eval()
    with torch.no_grad():
        expected = plain(x)
        assert_close(twin(x, t), expected, what=f"{describe(case)}, eval, |T|~{t_scale:g}")
        assert_close(twin(x, -t), expected, what=f"{describe(case)}, eval, T negated")


@kinds
@given(data=st.data(), t_scale=t_scales)
def test_zero_init_twin_equals_source_in_train_mode_and_updates_the_same_stats(
    kind: str, data: st.DataObject, t_scale: float
) -> None:
    case = data.draw(block_cases(kind, train_safe=True))
    plain, twin, x, t = build(case, t_scale=t_scale)
    plain.train(), twin.train()
    what = f"{describe(case)}, train, |T|~{t_scale:g}"
    assert_close(twin(x, t), plain(x), what=what)
    # BN running stats moved in both, by the same batch statistics.
    twin_buffers = dict(twin.named_buffers())
    for name, buf in plain.named_buffers():
        assert_close(twin_buffers[name], buf, what=f"{what}: buffer {name} after one step")


@kinds
@given(data=st.data())
def test_from_module_copies_every_source_tensor_and_leaves_the_source_alone(
    kind: str, data: st.DataObject
) -> None:
    case = data.draw(block_cases(kind))
    cfg = case.config
    torch.manual_seed(case.seed)
    plain = randomize_batchnorm_(make_block(kind, cfg.channels, cfg.r))
    before = state_dict_snapshot(plain)
    twin = COND_BLOCKS[kind].from_module(plain, cond_dim=cfg.cond_dim, init="default")
    what = describe(case, init="default")
    assert_state_dict_equal(before, state_dict_snapshot(plain), what=f"{what}: source")

    twin_sd = twin.state_dict()
    n = cfg.cond_dim
    for key, src in before.items():
        got = twin_sd[key]
        if got.shape != src.shape:  # the widened W1: [T-columns | source columns]
            got = got[:, n:].reshape(src.shape)
        assert torch.equal(got, src), f"{what}: {key} is not a copy of the source's"

    # A copy, not a share: training the twin must not move the source.
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
        for b in twin.buffers():
            b.add_(1)
    assert_state_dict_equal(before, state_dict_snapshot(plain), what=f"{what}: source after")


# --- initialisation of the T-columns ---------------------------------------------------------


@kinds
@given(config=st.data())
def test_t_columns_are_zero_by_default_and_random_with_default_init(
    kind: str, config: st.DataObject
) -> None:
    cfg = config.draw(block_configs(kind))
    _, zero_twin = block_pair(kind, cfg.channels, cfg.r, cfg.cond_dim)
    _, rand_twin = block_pair(kind, cfg.channels, cfg.r, cfg.cond_dim, init="default")
    what = (
        f"{COND_BLOCKS[kind].__name__}.from_module(C={cfg.channels}, r={cfg.r}, n={cfg.cond_dim})"
    )
    assert not t_columns(zero_twin).any(), f"{what}, init='zeros': T-columns are not all zero"
    cols = t_columns(rand_twin).detach()
    assert cols.numel() == cfg.cond_dim * expected_hidden_width(kind, cfg.channels, cfg.r), what
    assert bool((cols != 0).all()), f"{what}, init='default': some T-columns are zero"
    bound = 1.0 / cols.shape[1] ** 0.5  # at most PyTorch's default bound 1/sqrt(fan_in)
    assert float(cols.abs().max()) <= bound, f"{what}, init='default': |T-columns| > {bound}"


@kinds
def test_default_init_twin_depends_on_t(kind: str) -> None:
    """A well-conditioned config (8 hidden units, 4 samples): T changes the output."""
    torch.manual_seed(1)
    plain, twin = block_pair(kind, 32, 4, 10, init="default")
    plain.eval(), twin.eval()
    x, t = torch.randn(4, 32, 5, 5), torch.randn(4, 10)
    what = f"{COND_BLOCKS[kind].__name__}.from_module(..., init='default')"
    with torch.no_grad():
        out = twin(x, t)
        assert_not_close(out, plain(x), what=f"{what} vs its source", min_abs_diff=1e-4)
        assert_not_close(out, twin(x, t + 1), what=f"{what} at T vs T + 1", min_abs_diff=1e-4)


# --- gates -----------------------------------------------------------------------------------


@kinds
@given(data=st.data(), t_scale=t_scales, x_scale=st.sampled_from([1.0, 100.0]))
def test_gates_lie_in_the_unit_interval(
    kind: str, data: st.DataObject, t_scale: float, x_scale: float
) -> None:
    case = data.draw(block_cases(kind))
    plain, twin, x, t = build(case, init="default", t_scale=t_scale)
    plain.eval(), twin.eval()
    x = x * x_scale
    with torch.no_grad():
        for name, s in [
            ("plain._scale(x)", plain._scale(x)),
            ("twin._scale(x, t)", twin._scale(x, t)),
        ]:
            what = f"{describe(case, init='default')}: {name}, |x|~{x_scale:g}, |T|~{t_scale:g}"
            assert torch.broadcast_shapes(s.shape, x.shape) == x.shape, f"{what}: {s.shape}"
            assert_in_range(s, 0.0, 1.0, what=what)


# --- gradients -------------------------------------------------------------------------------


@kinds
@pytest.mark.parametrize("init", ["zeros", "default"])
@given(data=st.data())
def test_every_parameter_and_t_get_a_gradient(kind: str, init: str, data: st.DataObject) -> None:
    case = data.draw(block_cases(kind, train_safe=True))
    plain, twin, x, t = build(case, init=init)
    plain.train(), twin.train()
    t.requires_grad_(True)
    what = describe(case, init=init)
    weighted_sum(plain(x)).backward()
    assert_all_params_have_grad(plain, what=f"{what}: source", allow_zero=True)
    weighted_sum(twin(x, t)).backward()
    assert_all_params_have_grad(twin, what=f"{what}: twin", allow_zero=True)
    assert t.grad is not None, f"{what}: T got no gradient"
    assert_shape(t.grad, t.shape, what=f"{what}: dT")


@kinds
@pytest.mark.parametrize("init", ["zeros", "default"])
def test_every_gradient_is_nonzero_in_a_well_conditioned_block(kind: str, init: str) -> None:
    """With zero T-columns dL/dT is exactly 0, but dL/d(T-columns) is not: training can start."""
    torch.manual_seed(2)
    _, twin = block_pair(kind, 32, 4, 6, init=init)
    twin.train()
    x, t = torch.randn(4, 32, 5, 5), torch.randn(4, 6, requires_grad=True)
    weighted_sum(twin(x, t)).backward()
    what = f"{COND_BLOCKS[kind].__name__}.from_module(C=32, r=4, n=6, init={init!r}), train"
    assert_all_params_have_grad(twin, what=what)
    if init == "zeros":
        assert not t.grad.any(), f"{what}: the output depends on T through zero columns"
    else:
        assert t.grad.any(), f"{what}: dL/dT is all zero"


# --- parameter counts ------------------------------------------------------------------------


@kinds
@given(data=st.data())
def test_twin_adds_exactly_cond_dim_times_hidden_width_params(
    kind: str, data: st.DataObject
) -> None:
    cfg = data.draw(block_configs(kind))
    plain, twin = block_pair(kind, cfg.channels, cfg.r, cfg.cond_dim)
    kw = {} if kind == "eca" else {"r": cfg.r}
    direct = COND_BLOCKS[kind](cfg.channels, cond_dim=cfg.cond_dim, **kw)
    expected = cfg.cond_dim * expected_hidden_width(kind, cfg.channels, cfg.r)
    what = f"{kind}: C={cfg.channels}, r={cfg.r}, n={cfg.cond_dim}"
    assert count_params(twin) - count_params(plain) == expected, what
    assert count_params(direct) == count_params(twin), f"{what}: direct vs from_module"


def test_coord_attn_floors_the_hidden_width_at_min_channels() -> None:
    """As the original code: ``mip = max(8, C // r)``, so the default r=32 works for C < 32."""
    assert CoordAttn(16).conv1.out_channels == 8
    assert CoordAttn(64, r=2).conv1.out_channels == 32
    assert CondCoordAttn(16, cond_dim=3).conv1.out_channels == 8
    assert CoordAttn(16, min_channels=1, r=32).conv1.out_channels == 1


def test_twin_follows_the_source_dtype() -> None:
    torch.manual_seed(3)
    for kind in KINDS:
        plain = make_block(kind, 16, 2).double().eval()
        twin = COND_BLOCKS[kind].from_module(plain, cond_dim=4)
        assert all(p.dtype == torch.float64 for p in twin.parameters()), kind
        x, t = torch.randn(2, 16, 3, 3, dtype=torch.float64), torch.randn(2, 4)
        assert_close(twin.eval()(x, t), plain(x), what=f"{kind} twin in float64", atol=1e-12)


# --- argument errors -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SqueezeExcite, Cbam])
def test_r_larger_than_channels_raises(cls: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match=r"r=17 is larger than channels=16"):
        cls(16, r=17)
    twin_cls = COND_BLOCKS["se" if cls is SqueezeExcite else "cbam"]
    with pytest.raises(ValueError, match=r"r=17 is larger than channels=16"):
        twin_cls(16, cond_dim=3, r=17)


@pytest.mark.parametrize("kind", ["se", "cbam", "coord"])
@pytest.mark.parametrize("r", [0, -2])
def test_non_positive_r_raises(kind: str, r: int) -> None:
    with pytest.raises(ValueError, match="r must be a positive int"):
        PLAIN_BLOCKS[kind](16, r=r)


@pytest.mark.parametrize("cls", list(PLAIN_BLOCKS.values()))
@pytest.mark.parametrize("channels", [0, -4])
def test_non_positive_channels_raise(cls: type[nn.Module], channels: int) -> None:
    with pytest.raises(ValueError, match="channels must be a positive int"):
        cls(channels)


def test_non_positive_min_channels_raises() -> None:
    with pytest.raises(ValueError, match="min_channels must be a positive int"):
        CoordAttn(16, min_channels=0)


@kinds
@pytest.mark.parametrize("cond_dim", [0, -1, 2.5, True])
def test_bad_cond_dim_raises(kind: str, cond_dim: object) -> None:
    with pytest.raises(ValueError, match="cond_dim must be a positive int"):
        COND_BLOCKS[kind](16, cond_dim=cond_dim)
    with pytest.raises(ValueError, match="cond_dim must be a positive int"):
        COND_BLOCKS[kind].from_module(make_block(kind, 16, 2), cond_dim=cond_dim)


@pytest.mark.parametrize(
    ("twin_kind", "src_kind"), [(a, b) for a in KINDS for b in KINDS if a != b]
)
def test_from_module_rejects_a_source_of_another_type(twin_kind: str, src_kind: str) -> None:
    src = make_block(src_kind, 16, 2)
    twin_cls = COND_BLOCKS[twin_kind]
    with pytest.raises(
        TypeError,
        match=rf"{twin_cls.__name__}\.from_module expects a "
        rf"{PLAIN_BLOCKS[twin_kind].__name__}, got {type(src).__name__}",
    ):
        twin_cls.from_module(src, cond_dim=3)


@kinds
def test_from_module_rejects_a_twin_as_source(kind: str) -> None:
    _, twin = block_pair(kind, 16, 2, 3)
    with pytest.raises(TypeError, match="from_module expects"):
        COND_BLOCKS[kind].from_module(twin, cond_dim=3)


@kinds
@pytest.mark.parametrize("init", ["ones", "Zeros", ""])
def test_bad_init_string_raises(kind: str, init: str) -> None:
    with pytest.raises(ValueError, match=r"init must be one of \('zeros', 'default'\)"):
        COND_BLOCKS[kind].from_module(make_block(kind, 16, 2), cond_dim=3, init=init)


@pytest.mark.parametrize(
    "build_block",
    [
        lambda: Eca(16, kernel_size=4),
        lambda: CondEca(16, cond_dim=3, kernel_size=4),
        lambda: Cbam(16, kernel_size=4),
        lambda: CondCbam(16, cond_dim=3, kernel_size=4),
    ],
    ids=["Eca", "CondEca", "Cbam", "CondCbam"],
)
def test_even_kernel_size_raises(build_block) -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        build_block()


@kinds
@pytest.mark.parametrize(
    "t_shape", [(3,), (3, 5), (3, 3), (3, 4, 1), (1, 4), (2, 4), (4, 4)], ids=str
)
def test_wrong_t_shape_raises_at_forward(kind: str, t_shape: tuple[int, ...]) -> None:
    """T must be ``(B, cond_dim)``: a batch of 1 must not broadcast silently over the batch."""
    _, twin = block_pair(kind, 16, 2, 4)
    x = torch.randn(3, 16, 4, 4)
    with pytest.raises(ValueError, match=r"cond \(T\) must have shape \(batch, 4\)"):
        twin.eval()(x, torch.randn(t_shape))


def test_cond_twin_requires_t() -> None:
    _, twin = block_pair("se", 16, 2, 4)
    with pytest.raises(TypeError):
        twin(torch.randn(2, 16, 3, 3))


# --- inline SE pieces: CondLinear (a widened W1) and CondEffectiveSE -------------------------


@given(
    config=block_configs("se"),
    batch=batch_sizes,
    side=spatial_sizes,
    conv=st.booleans(),
    bias=st.booleans(),
    t_scale=t_scales,
    seed=seeds,
)
def test_zero_init_cond_linear_equals_its_source_for_any_t(
    config: BlockConfig,
    batch: int,
    side: int,
    conv: bool,
    bias: bool,
    t_scale: float,
    seed: int,
) -> None:
    c, rd, n = config.channels, config.channels // config.r, config.cond_dim
    torch.manual_seed(seed)
    src = nn.Conv2d(c, rd, 1, bias=bias) if conv else nn.Linear(c, rd, bias=bias)
    z = torch.randn((batch, c, side, side) if conv else (batch, c))
    t = torch.randn(batch, n) * t_scale
    what = f"CondLinear.from_module({src}, cond_dim={n})"
    twin = CondLinear.from_module(src, cond_dim=n)
    with torch.no_grad():
        assert_close(twin(z, t), src(z), what=what)
    assert count_params(twin) - count_params(src) == n * rd, what
    wide = CondLinear.from_module(src, cond_dim=n, init="default")
    assert bool((wide.weight[:, :n] != 0).all()), f"{what}, init='default': zero T-columns"
    with torch.no_grad():
        assert_close(wide.weight[:, n:].reshape(src.weight.shape), src.weight, what=what)


@pytest.mark.parametrize(
    ("src", "error"),
    [
        (nn.Conv2d(8, 4, 3), ValueError),
        (nn.Conv2d(8, 4, 1, stride=2), ValueError),
        (nn.Conv2d(8, 4, 1, groups=2), ValueError),
        (nn.ReLU(), TypeError),
        (SqueezeExcite(8, r=2), TypeError),
    ],
    ids=["3x3-conv", "strided-conv", "grouped-conv", "relu", "se-block"],
)
def test_cond_linear_rejects_what_it_cannot_widen(src: nn.Module, error: type) -> None:
    with pytest.raises(error, match=r"CondLinear\.from_module expects|only a 1x1"):
        CondLinear.from_module(src, cond_dim=3)


@given(
    config=block_configs("se"),
    batch=batch_sizes,
    side=spatial_sizes,
    add_maxpool=st.booleans(),
    bias=st.booleans(),
    t_scale=t_scales,
    seed=seeds,
)
def test_zero_init_cond_effective_se_equals_its_source_for_any_t(
    config: BlockConfig,
    batch: int,
    side: int,
    add_maxpool: bool,
    bias: bool,
    t_scale: float,
    seed: int,
) -> None:
    c, n = config.channels, config.cond_dim
    torch.manual_seed(seed)
    fc, gate = nn.Linear(c, c, bias=bias), nn.Hardsigmoid()
    x = torch.randn(batch, c, side, side)
    t = torch.randn(batch, n) * t_scale
    z = x.mean((2, 3))
    if add_maxpool:
        z = 0.5 * z + 0.5 * x.amax((2, 3))
    expected = x * gate(fc(z))[:, :, None, None]  # timm EffectiveSEModule
    twin = CondEffectiveSE.from_parts(fc=fc, gate=gate, cond_dim=n, add_maxpool=add_maxpool)
    what = f"CondEffectiveSE.from_parts(Linear({c}, {c}, bias={bias}), cond_dim={n})"
    with torch.no_grad():
        assert_close(twin(x, t), expected.detach(), what=what)
        assert_in_range(twin._scale(x, t * 1e3), 0.0, 1.0, what=f"{what}: _scale")


@kinds
def test_from_module_checks_channels_against_the_source(kind: str) -> None:
    plain = make_block(kind, 16, 2)
    twin = COND_BLOCKS[kind].from_module(plain, channels=16, cond_dim=3)
    assert twin.channels == 16
    with pytest.raises(ValueError, match="channels=12, but the source has 16 channels"):
        COND_BLOCKS[kind].from_module(plain, channels=12, cond_dim=3)
