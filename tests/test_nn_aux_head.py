"""The aux head: GoogLeNet's InceptionAux layout, the source of the early prediction T."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_all_params_have_grad, assert_close, assert_shape
from hypothesis import given
from hypothesis import strategies as st
from strategies import batch_sizes, cond_dims, seeds
from torch import nn

from condattn.nn import AuxHead
from condattn.profiling import count_params


def expected_params(c: int, n: int, *, pool: int = 4, width: int = 128, hidden: int = 1024) -> int:
    conv = c * width  # 1x1, no bias
    bn = 2 * width  # weight and bias (running stats are buffers)
    fc1 = pool * pool * width * hidden + hidden
    fc2 = hidden * n + n
    return conv + bn + fc1 + fc2


@given(
    b=batch_sizes,
    c=st.integers(min_value=1, max_value=64),
    h=st.integers(min_value=1, max_value=11),
    w=st.integers(min_value=1, max_value=11),
    n=cond_dims,
    train=st.booleans(),
    seed=seeds,
)
def test_output_is_batch_by_num_classes_for_any_stage_shape(
    b: int, c: int, h: int, w: int, n: int, train: bool, seed: int
) -> None:
    """Spatial sizes below 4 and not multiples of 4 too: the adaptive pool takes any size."""
    torch.manual_seed(seed)
    head = AuxHead(c, n).train(train)
    out = head(torch.randn(b, c, h, w))
    assert_shape(out, (b, n), what=f"AuxHead({c}, {n}) on ({b}, {c}, {h}, {w}), train={train}")
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize(("c", "n"), [(16, 10), (256, 100), (1024, 100), (3, 1)])
def test_param_count_matches_the_inception_aux_formula(c: int, n: int) -> None:
    # C*128 + 2*128 + 2048*1024 + 1024 + 1024*n + n
    assert count_params(AuxHead(c, n)) == c * 128 + 2 * 128 + 2048 * 1024 + 1024 + 1024 * n + n
    assert count_params(AuxHead(c, n)) == expected_params(c, n)


def test_param_count_follows_pool_width_and_hidden() -> None:
    head = AuxHead(32, 7, pool_size=2, width=16, hidden=64)
    assert count_params(head) == expected_params(32, 7, pool=2, width=16, hidden=64)
    assert_shape(head.eval()(torch.randn(2, 32, 5, 3)), (2, 7), what="AuxHead(pool_size=2)")


def test_layers_follow_torchvision_inception_aux() -> None:
    head = AuxHead(64, 100)
    assert head.conv.bias is None, "the 1x1 conv has no bias (BN follows)"
    assert head.conv.kernel_size == (1, 1)
    assert isinstance(head.bn, nn.BatchNorm2d)
    assert head.bn.eps == pytest.approx(1e-3)
    assert (head.fc1.in_features, head.fc1.out_features) == (2048, 1024)
    assert (head.fc2.in_features, head.fc2.out_features) == (1024, 100)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 0.9])
def test_dropout_rate_is_stored(p: float) -> None:
    assert AuxHead(8, 10, dropout=p).dropout.p == p


def test_default_dropout_is_the_papers() -> None:
    assert AuxHead(8, 10).dropout.p == 0.7  # section 4 and Table 5


def test_dropout_is_active_in_train_mode_only() -> None:
    head = AuxHead(8, 10, dropout=0.5)
    x = torch.randn(4, 8, 6, 6)
    head.eval()
    with torch.no_grad():
        assert_close(head(x), head(x), what="AuxHead.eval() called twice")
        head.train()
        a, b = head(x), head(x)
    assert not torch.equal(a, b), "AuxHead.train(): dropout did not change the output"


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_bad_dropout_raises(p: float) -> None:
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        AuxHead(8, 10, dropout=p)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0, "num_classes": 10},
        {"in_channels": 8, "num_classes": 0},
        {"in_channels": 8, "num_classes": -1},
        {"in_channels": 8, "num_classes": 10, "pool_size": 0},
        {"in_channels": 8, "num_classes": 10, "width": 0},
        {"in_channels": 8, "num_classes": 10, "hidden": 0},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_non_positive_sizes_raise(kwargs: dict) -> None:
    bad = next(k for k, v in kwargs.items() if v <= 0)
    with pytest.raises(ValueError, match=f"{bad} must be a positive int"):
        AuxHead(**kwargs)


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    head = AuxHead(16, 10, dropout=0.3).train()
    out = head(torch.randn(3, 16, 8, 8))
    (out * torch.randn_like(out)).sum().backward()
    assert_all_params_have_grad(head, what="AuxHead(16, 10).train() backward")
