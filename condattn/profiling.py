"""Parameter and MAC counting, including the paper's thop-0.0.31 rules (Table 2).

Three MAC counters, all on a deep copy in eval mode, so the caller's model never changes:

- ``rules="paper"``: thop 0.0.31's per-module rules (2020), re-implemented here because that thop
  no longer imports on Python 3.11. The paper says its MACs come from thop but names no version:
  0.0.31's rules are our choice, justified only by reproducing all six Table 2 numbers exactly
  (``benchmarks/params_macs.py``). Forward hooks on leaf modules, summed per call:

  ============================  ==========================================================
  module                        MACs
  ============================  ==========================================================
  ``Conv{1,2,3}d``              out elements x (Cin/groups x prod(k) + 1 if bias)
  ``BatchNorm{1,2,3}d``         2 x elements
  ``Linear``                    in_features x out elements (no bias term)
  ``AdaptiveAvgPool{1,2,3}d``   (prod(in_size // out_size) + 1) x out elements
  ``AvgPool{1,2,3}d``           (prod(kernel) + 1) x out elements
  everything else               0 (ReLU, Sigmoid, Dropout, pooling maxes, functional ops)
  ============================  ==========================================================

  One extension (ours, not thop's): a learned map run as a *function call* on a parameter is
  counted with the same rules, attributed to the module that owns the weight. Twins such as
  :class:`~condattn.nn.CondCoordAttn`, :class:`~condattn.nn.CondLinear` (the inline-SE twin)
  and the timm twins built on ``cond_conv1x1`` compute their widened first layer
  ``W [T; g] = W_g g + W_T T`` that way (no broadcast copy of T), so a module hook never sees
  it. Counted: ``conv{1,2,3}d`` (the conv rule) and ``linear`` / ``matmul`` / ``mm`` (the Linear
  rule: inner dim x out elements) whose weight is a parameter or a view of one, outside a
  module that a rule above already counts. The ``W_T T`` term is counted once per sample, as
  it is computed, not once per position. Products of two activations (attention maps) stay
  at 0, as in thop 0.0.31. Modules built from ``nn`` layers alone (the paper's SE-ResNets, SE-R
  included) make no such call, so Table 2 is unchanged.

- ``rules="thop"``: the installed thop (0.1.x, ``thop.profile``). Its rules differ from 0.0.31:
  convs ignore the bias (``out elements x Cin/groups x prod(k)``), affine BatchNorm counts
  ``4 x elements``, and it sees only modules that ran; Linear and adaptive pooling count as above.
  It leaves ``total_ops``/``total_params`` buffers on every module, so it runs on a copy here.
- ``rules="flop_counter"``: ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2 = MACs) of
  matmul-like ATen ops only (conv, mm, addmm, bmm): no BN, pooling or bias terms, but it sees
  functional ops that module hooks miss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from condattn.nn._common import GlobalAvgPool

__all__ = ["MAC_RULES", "count_macs", "count_params", "mac_breakdown"]

MAC_RULES = ("paper", "thop", "flop_counter")


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _conv(m: nn.Module, inp, out: Tensor) -> int:
    kernel = math.prod(m.weight.shape[2:])
    return out.numel() * (m.in_channels // m.groups * kernel + (1 if m.bias is not None else 0))


def _bn(m: nn.Module, inp, out: Tensor) -> int:
    return 2 * _first(inp).numel()


def _linear(m: nn.Linear, inp, out: Tensor) -> int:
    return m.in_features * out.numel()


def _adaptive_avgpool(m: nn.Module, inp, out: Tensor) -> int:
    x = _first(inp)
    in_size = x.shape[2:]
    out_size = out.shape[2:]
    kernel = math.prod(i // o for i, o in zip(in_size, out_size))
    return (kernel + 1) * out.numel()


def _avgpool(m: nn.Module, inp, out: Tensor) -> int:
    k = m.kernel_size
    dims = out.dim() - 2
    kernel = math.prod(k) if isinstance(k, (tuple, list)) else k**dims
    return (kernel + 1) * out.numel()


_PAPER_RULES: dict[type[nn.Module], Callable[..., int]] = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    nn.BatchNorm1d: _bn,
    nn.BatchNorm2d: _bn,
    nn.BatchNorm3d: _bn,
    nn.Linear: _linear,
    nn.AdaptiveAvgPool1d: _adaptive_avgpool,
    nn.AdaptiveAvgPool2d: _adaptive_avgpool,
    nn.AdaptiveAvgPool3d: _adaptive_avgpool,
    nn.AvgPool1d: _avgpool,
    nn.AvgPool2d: _avgpool,
    nn.AvgPool3d: _avgpool,
    GlobalAvgPool: _adaptive_avgpool,  # our SE's nn.AdaptiveAvgPool2d(1), computed faster
}


def _dummy_input(model: nn.Module, input_size: Sequence[int]) -> Tensor:
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.randn(*input_size, device=device, dtype=dtype)


def _conv_call(weight: Tensor, bias: Tensor | None, out: Tensor) -> int:
    return out.numel() * (math.prod(weight.shape[1:]) + (1 if bias is not None else 0))


def _inner_dim_call(a: Tensor, out: Tensor) -> int:
    return a.shape[-1] * out.numel()  # the Linear rule: in features x out elements


class _FunctionalMaps(TorchFunctionMode):
    """Counts learned maps run as function calls (see the module docstring), per weight owner.

    ``owners`` maps ``id(parameter)`` to its module's name; ``depth`` > 0 while a module counted
    by a rule runs (its own ``F.conv2d`` / ``F.linear`` call is already counted by the hook).
    """

    _CONV = (torch.conv1d, torch.conv2d, torch.conv3d)
    _LINEAR = (torch.nn.functional.linear,)
    _MATMUL = (torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm, Tensor.mm)

    def __init__(self, owners: dict[int, str], counts: dict[str, int]):
        super().__init__()
        self.owners = owners
        self.counts = counts
        self.depth = 0

    def _owner(self, t: object) -> str | None:
        if not isinstance(t, Tensor):
            return None
        base = t if t._base is None else t._base  # a view's _base is its root tensor
        return self.owners.get(id(base))

    def _add(self, name: str | None, macs: int) -> None:
        if name is not None:
            self.counts[name] = self.counts.get(name, 0) + int(macs)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth or not isinstance(out, Tensor):
            return out
        if func in self._CONV:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            self._add(self._owner(weight), _conv_call(weight, bias, out))
        elif func in self._LINEAR:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self._add(self._owner(weight), _inner_dim_call(args[0], out))
        elif func in self._MATMUL and len(args) == 2:
            a, b = args
            self._add(self._owner(b) or self._owner(a), _inner_dim_call(a, out))
        return out


def mac_breakdown(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> dict[str, int]:
    """Paper-rule MACs per module (qualified name -> MACs), on a copy in eval mode.

    Keys are leaf modules with a rule, plus the owners of weights used in function calls (see
    the module docstring), e.g. a ``CondCoordAttn``'s ``conv1`` or a ``CondLinear``.
    """
    model = copy.deepcopy(model).eval()
    counts: dict[str, int] = {}
    owners = {id(p): n.rpartition(".")[0] for n, p in model.named_parameters()}
    functional = _FunctionalMaps(owners, counts)
    handles = []
    for name, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue  # thop 0.0.31 hooks leaves only
        rule = _PAPER_RULES.get(type(m))
        if rule is None:
            continue

        def pre_hook(mod, inp):
            functional.depth += 1

        def hook(mod, inp, out, _name=name, _rule=rule):
            functional.depth -= 1
            counts[_name] = counts.get(_name, 0) + int(_rule(mod, inp, _first(out)))

        handles.append(m.register_forward_pre_hook(pre_hook))
        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad(), functional:
            model(_dummy_input(model, input_size))
    finally:
        for h in handles:
            h.remove()
    return counts


def count_macs(
    model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32), *, rules: str = "paper"
) -> int:
    """Multiply-accumulates of one forward pass of ``input_size``.

    Args:
        model: any module; it is not modified (counting runs on a deep copy in eval mode).
        input_size: the input shape; the paper's Table 2 uses ``(1, 3, 32, 32)``.
        rules: ``"paper"`` (thop 0.0.31's rules, which reproduce Table 2; see the module
            docstring), ``"thop"`` (installed thop) or
            ``"flop_counter"`` (``FlopCounterMode`` FLOPs / 2).
    """
    if rules not in MAC_RULES:
        raise ValueError(f"unknown rules {rules!r}; valid: {', '.join(MAC_RULES)}")
    if rules == "paper":
        return sum(mac_breakdown(model, input_size).values())
    model = copy.deepcopy(model).eval()
    x = _dummy_input(model, input_size)
    if rules == "thop":
        try:
            import thop
        except ImportError as e:  # pragma: no cover - thop is a dependency
            raise ImportError("rules='thop' needs the thop package: pip install thop") from e
        from thop.profile import register_hooks

        # thop looks rules up by exact type: our pool subclass counts as what it is.
        ours = {GlobalAvgPool: register_hooks[nn.AdaptiveAvgPool2d]}
        macs, _ = thop.profile(model, inputs=(x,), custom_ops=ours, verbose=False)
        return int(macs)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2
