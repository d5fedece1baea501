"""Converted models under ``torch.compile`` and ``torch.export``.

A converted model is a ``GraphModule`` that returns a ``CondOutput`` (a NamedTuple): dynamo and
export must see through both. Tests over ~20 s on a 2-core CPU are marked ``slow`` (run them with
``pytest -m slow``): here, inductor's C++ codegen. The eager, aot_eager and export checks take a
few seconds and run by default.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from torch import nn

import condattn
from condattn import CondOutput
from condattn.models import create_model

N = 10
SMALL_HEAD = {"width": 16, "hidden": 32}


@pytest.fixture
def converted() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("se_resnet18", num_classes=N, widths=(8, 8, 16, 16))
    # init="default" so that T matters; probs + detach put extra nodes between head and SE.
    return condattn.convert(
        model, ["layer2", "layer3"], init="default", cond="probs", aux_head=SMALL_HEAD
    ).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _assert_same(out, ref, *, what: str) -> None:
    assert type(out) is CondOutput, f"{what}: returned {type(out).__name__}"
    assert_close(out.logits, ref.logits, atol=1e-5, what=f"{what}: logits")
    assert len(out.aux_logits) == len(ref.aux_logits)
    for i, (a, b) in enumerate(zip(out.aux_logits, ref.aux_logits)):
        assert_close(a, b, atol=1e-5, what=f"{what}: aux logits {i}")


def test_export_matches_eager(converted) -> None:
    x = _x()
    with torch.no_grad():
        ref = converted(x)
    program = torch.export.export(converted, (x,))
    with torch.no_grad():
        out = program.module()(x)
    _assert_same(out, ref, what="torch.export.export(converted).module()")
    # the batch size is not baked in when declared dynamic
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(converted, (x,), dynamic_shapes=({0: batch},))
    x5 = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        _assert_same(program.module()(x5), converted(x5), what="export with a dynamic batch")


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_matches_eager(converted, backend: str) -> None:
    torch._dynamo.reset()
    x = _x()
    with torch.no_grad():
        ref = converted(x)
        out = torch.compile(converted, backend=backend, fullgraph=True)(x)
    _assert_same(out, ref, what=f"torch.compile(converted, backend={backend!r})")


def test_compile_aot_eager_trains(converted) -> None:
    """Gradients through the compiled graph equal the eager ones (aux heads included)."""
    torch._dynamo.reset()
    converted.train()
    for m in converted.modules():  # dropout off, BN in batch mode: a deterministic train step
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = _x()
    compiled = torch.compile(converted, backend="aot_eager", fullgraph=True)
    grads = []
    for fn in (converted, compiled):
        converted.zero_grad()
        out = fn(x)
        (out.logits.square().sum() + sum(t.square().sum() for t in out.aux_logits)).backward()
        grads.append([p.grad.clone() for p in converted.parameters()])
    for (name, _), a, b in zip(converted.named_parameters(), *grads):
        assert_close(b, a, atol=1e-4, rtol=1e-4, what=f"compiled grad of {name}")


@pytest.mark.slow
def test_compile_inductor_matches_eager(converted) -> None:
    torch._dynamo.reset()
    x = _x()
    with torch.no_grad():
        ref = converted(x)
        out = torch.compile(converted, fullgraph=True)(x)
    _assert_same(out, ref, what="torch.compile(converted) (inductor)")
