"""condattn.nn.fused: the fused SE gate equals the eager SE, values and gradients."""

from __future__ import annotations

import pytest
import torch

import condattn
from condattn.nn import CondSqueezeExcite, SqueezeExcite
from condattn.nn.fused import FusedSqueezeExcite, fuse_squeeze_excite, scale_channels, se_gate


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_plain_and_conditioned(channels_last):
    torch.manual_seed(0)
    se = SqueezeExcite(12, r=4).double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 12, 4, 5, dtype=torch.double).contiguous(memory_format=fmt)
    x.requires_grad_()
    fused = FusedSqueezeExcite.from_module(se).double()
    torch.testing.assert_close(fused(x), se(x))
    assert torch.autograd.gradcheck(fused, (x,))
    cse = CondSqueezeExcite.from_module(se, cond_dim=5, init="default").double()
    fcse = FusedSqueezeExcite.from_module(cse).double()
    t = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(fcse(x, t), cse(x, t))
    assert torch.autograd.gradcheck(fcse, (x, t))
    w = [
        p.detach().clone().requires_grad_()
        for p in (se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias)
    ]
    assert torch.autograd.gradcheck(lambda x, *w: se_gate(x, *w), (x, *w))
    s = torch.rand(3, 12, 1, 1, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(scale_channels, (x, s))


def test_fuse_converted_model_same_function_and_grads():
    torch.manual_seed(0)
    base = condattn.models.create_model("se_resnet18", num_classes=10, widths=(8, 8, 16, 16))
    conv = condattn.convert(base, init="default")
    fused = fuse_squeeze_excite(conv)
    assert not any(isinstance(m, FusedSqueezeExcite) for m in conv.modules()), "not in place"
    assert sum(isinstance(m, FusedSqueezeExcite) for m in fused.modules()) == 8
    x = torch.randn(2, 3, 32, 32)
    conv.eval(), fused.eval()
    torch.testing.assert_close(fused(x).logits, conv(x).logits)
    conv.train(), fused.train()
    grads = []
    for m in (conv, fused):
        torch.manual_seed(1)  # same dropout masks in the aux heads
        out = m(x)
        (out.logits.sum() + sum(a.sum() for a in out.aux_logits)).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys(), "fusing must keep the parameter names"
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-4, msg=n)
    fused.load_state_dict(conv.state_dict())  # state dicts are interchangeable


def test_unfusable_is_rejected():
    se = CondSqueezeExcite(16, cond_dim=3, add_maxpool=True)
    with pytest.raises(TypeError, match="cannot fuse"):
        FusedSqueezeExcite.from_module(se)
    with pytest.raises(ValueError, match="needs cond"):
        FusedSqueezeExcite(8, rd_channels=2, cond_dim=3)(torch.randn(1, 8, 2, 2))
