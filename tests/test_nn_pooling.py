"""The attention blocks' pooling (``condattn.nn._common``): on CPU in bf16/fp16 the means are
matrix products (torch's half-precision reductions are 10-20x slower there); they must equal
``mean`` in value and gradient, in both memory formats, and trace under torch.fx."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from condattn.nn import CondSqueezeExcite, SqueezeExcite
from condattn.nn._common import GlobalAvgPool, channel_mean, global_avg_pool

LAYOUTS = ("contiguous", "channels_last")
SHAPES = [(2, 8, 7, 7), (3, 16, 4, 6), (1, 5, 1, 1)]


def _x(shape, dtype, layout):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_()


def _pool_and_grad(fn, x, g):
    x.grad = None
    y = fn(x)
    y.backward(g)
    return y.detach().float(), x.grad.float()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("ours", "dims"), [(global_avg_pool, (2, 3)), (channel_mean, 1)], ids=("hw", "c")
)
def test_fp32_is_torch_mean_exactly(ours, dims, shape, layout):
    x = _x(shape, torch.float32, layout)
    ref = lambda t: t.mean(dims, keepdim=True)  # noqa: E731
    g = torch.randn(ref(x).shape)
    assert torch.equal(ours(x), ref(x))
    assert torch.equal(_pool_and_grad(ours, x, g)[1], _pool_and_grad(ref, x, g)[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("ours", "dims"), [(global_avg_pool, (2, 3)), (channel_mean, 1)], ids=("hw", "c")
)
def test_half_matches_the_fp32_mean_to_rounding(ours, dims, shape, layout, dtype):
    x = _x(shape, dtype, layout)
    exact = x.detach().double().mean(dims, keepdim=True)
    g = torch.randn(exact.shape).to(dtype)
    y, grad = _pool_and_grad(ours, x, g)
    assert y.shape == exact.shape and ours(x).dtype == dtype
    eps = torch.finfo(dtype).eps
    # two roundings (the sum, then the division) against torch's one
    assert (y.double() - exact).abs().max() <= 2 * eps * exact.abs().max() + 1e-30
    n = x[0].numel() // exact[0].numel()  # elements averaged into each output
    want = (g.double() / n).expand(x.shape)
    assert (grad.double() - want).abs().max() <= 2 * eps * want.abs().max()
    ref = x.detach().mean(dims, keepdim=True)  # torch's own half-precision mean, for scale
    assert (y - ref.float()).abs().max() <= 2 * eps * ref.float().abs().max() + 1e-30


def test_channel_mean_keeps_the_memory_format():
    x = _x((2, 8, 5, 5), torch.bfloat16, "channels_last")
    assert channel_mean(x).is_contiguous(memory_format=torch.channels_last)


def test_se_pool_is_an_adaptive_avg_pool_and_traces():
    """Code that checks for ``nn.AdaptiveAvgPool2d`` still sees one, and fx records the pool
    as one call (its dtype test would otherwise run on a Proxy)."""
    se = SqueezeExcite(16, r=4)
    assert isinstance(se.pool, nn.AdaptiveAvgPool2d) and isinstance(se.pool, GlobalAvgPool)
    gm = torch.fx.symbolic_trace(se)
    assert any(n.target is global_avg_pool for n in gm.graph.nodes)
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(gm(x), se(x), rtol=0, atol=0)
    assert isinstance(CondSqueezeExcite(16, cond_dim=3, r=4).pool, GlobalAvgPool)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_se_under_bf16_autocast_matches_fp32(layout):
    se = SqueezeExcite(32, r=4)
    x = torch.randn(4, 32, 8, 8)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = se(x.bfloat16())
    torch.testing.assert_close(y.float(), se(x), rtol=0.03, atol=0.03)
