"""The deep-supervision loss: CE(main) + sum_i w_i CE(aux_i) (paper section 3.1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close
from hypothesis import given
from hypothesis import strategies as st
from strategies import seeds

from condattn import CondOutput, DeepSupervisionLoss, LossParts

aux_weight_lists = st.lists(
    st.floats(min_value=0.0, max_value=2.0, allow_nan=False, allow_infinity=False), max_size=3
)


@given(
    weights=aux_weight_lists,
    batch=st.integers(min_value=1, max_value=4),
    n=st.integers(min_value=2, max_value=10),
    smoothing=st.sampled_from([0.0, 0.1]),
    seed=seeds,
)
def test_total_is_main_ce_plus_weighted_aux_ce(
    weights: list[float], batch: int, n: int, smoothing: float, seed: int
) -> None:
    torch.manual_seed(seed)
    logits = torch.randn(batch, n, requires_grad=True)
    aux = tuple(torch.randn(batch, n) * 3 for _ in weights)
    y = torch.randint(0, n, (batch,))
    parts = DeepSupervisionLoss(weights, label_smoothing=smoothing)(CondOutput(logits, aux), y)

    what = f"DeepSupervisionLoss({weights}, label_smoothing={smoothing})"
    main = F.cross_entropy(logits, y, label_smoothing=smoothing)
    aux_ce = [F.cross_entropy(a, y, label_smoothing=smoothing) for a in aux]
    expected = main + sum(w * a for w, a in zip(weights, aux_ce))
    assert isinstance(parts, LossParts)
    assert_close(parts.total, expected, what=f"{what}: total")
    assert_close(parts.main, main, what=f"{what}: main")
    assert len(parts.aux) == len(weights)
    for i, (got, want) in enumerate(zip(parts.aux, aux_ce)):
        assert_close(got, want, what=f"{what}: aux[{i}] (unweighted)")


def test_total_carries_gradients_and_the_logged_parts_do_not() -> None:
    logits = torch.randn(4, 5, requires_grad=True)
    aux = (torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True))
    parts = DeepSupervisionLoss((0.3, 0.2))(CondOutput(logits, aux), torch.tensor([0, 1, 2, 3]))
    assert parts.total.requires_grad
    assert not parts.main.requires_grad
    assert not any(a.requires_grad for a in parts.aux)
    parts.total.backward()
    assert logits.grad is not None and all(a.grad is not None for a in aux)


def test_zero_aux_weight_drops_that_head_from_the_gradient() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    aux = (torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True))
    DeepSupervisionLoss((0.0, 0.5))(
        CondOutput(logits, aux), torch.tensor([0, 1, 2])
    ).total.backward()
    assert not aux[0].grad.any()
    assert aux[1].grad.any()


@pytest.mark.parametrize(("weights", "n_aux"), [((0.3, 0.3), 1), ((0.3,), 2), ((), 1)])
def test_wrong_number_of_aux_outputs_raises(weights: tuple, n_aux: int) -> None:
    out = CondOutput(torch.randn(2, 3), tuple(torch.randn(2, 3) for _ in range(n_aux)))
    with pytest.raises(ValueError, match=rf"returned {n_aux} aux outputs"):
        DeepSupervisionLoss(weights)(out, torch.tensor([0, 1]))


@pytest.mark.parametrize("weights", [(-0.1, 0.3), (0.3, -1.0), (-1e-9,)])
def test_negative_aux_weights_raise(weights: tuple) -> None:
    with pytest.raises(ValueError, match="aux_weights must be >= 0"):
        DeepSupervisionLoss(weights)


def test_plain_tensor_output_with_no_aux_weights_is_cross_entropy() -> None:
    logits, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    parts = DeepSupervisionLoss(())(logits, y)
    assert_close(parts.total, F.cross_entropy(logits, y), what="DeepSupervisionLoss(())(tensor)")
    assert parts.aux == ()


def test_plain_tensor_output_with_aux_weights_raises() -> None:
    with pytest.raises(ValueError, match="returned 0 aux outputs"):
        DeepSupervisionLoss((0.3, 0.3))(torch.randn(2, 3), torch.tensor([0, 1]))
