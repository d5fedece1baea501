"""torch.fx helpers of the transform layer: a leaf-aware tracer that remembers module outputs,
shape propagation, node shapes, the trunk of a graph and the inline-SE pattern."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from condattn.transform.modes import mode_forward


class ConversionError(ValueError):
    """A model cannot be converted as asked; the message says why and what to do."""


@dataclass
class TraceResult:
    graph: fx.Graph
    # qualified module name -> the node holding its (last) output, for every module called
    module_outputs: dict[str, fx.Node] = field(default_factory=dict)
    # qualified module name -> the node of its (last call's) first tensor argument
    module_inputs: dict[str, fx.Node] = field(default_factory=dict)


class _CondTracer(fx.Tracer):
    """Treats attention modules (and user-named modules) as leaves; records module outputs.

    Like torchvision's ``NodePathTracer``, it keeps the module scope so that a failure names the
    module being traced.

    Every argument has a default because fx pickles the tracer *class* with a GraphModule and
    calls ``_CondTracer()`` to re-trace its code when ``torch.load`` unpickles it (every module is
    a leaf then). By default timm's "do not trace" functions stay wrapped, as when converting.
    """

    def __init__(
        self,
        *,
        leaf_types: tuple[type[nn.Module], ...] = (),
        leaf_names: Iterable[str] = (),
        autowrap_functions: Sequence[Any] | None = None,
    ):
        if autowrap_functions is None:
            autowrap_functions = _timm_fx_extras()[1]
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.leaf_types = leaf_types
        self.leaf_names = set(leaf_names)
        self.module_outputs: dict[str, fx.Node] = {}
        self.module_inputs: dict[str, fx.Node] = {}
        self.module_stack_names: list[tuple[str, str]] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaf_types) or module_qualified_name in self.leaf_names:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self.module_stack_names.append((name, type(m).__name__))
        out = super().call_module(m, forward, args, kwargs)
        self.module_stack_names.pop()
        if isinstance(out, fx.Proxy):
            self.module_outputs[name] = out.node
            first = args[0] if args else None
            if isinstance(first, fx.Proxy):
                self.module_inputs[name] = first.node
        return out


def _timm_fx_extras() -> tuple[tuple[type[nn.Module], ...], tuple[Any, ...]]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


def trace(
    model: nn.Module,
    *,
    leaf_types: tuple[type[nn.Module], ...],
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> TraceResult:
    """Symbolically trace ``model`` with ``leaf_types`` (and ``leaf_modules``) kept whole.

    Raises:
        ConversionError: naming the module whose tracing failed and the options that can help.
    """
    names = [x for x in leaf_modules if isinstance(x, str)]
    types = tuple(x for x in leaf_modules if isinstance(x, type))
    timm_leaves, timm_fns = _timm_fx_extras()
    tracer = _CondTracer(
        leaf_types=leaf_types + types + timm_leaves, leaf_names=names, autowrap_functions=timm_fns
    )
    try:
        with mode_forward(model):  # a DualGraphModule: the code of its current mode
            graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as e:
        where = (
            tracer.module_stack_names[-1]
            if tracer.module_stack_names
            else ("", type(model).__name__)
        )
        qual = where[0] or "<root>"
        # The root itself cannot be a leaf: only concrete_args (or a rewrite) can help there.
        leaf_hint = (
            f"keep that module whole with convert(..., leaf_modules=[{where[0]!r}]) "
            "(attention inside it is conditioned in place), or "
            if where[0]
            else "move the data-dependent code into a submodule and name it in leaf_modules=, or "
        )
        raise ConversionError(
            f"torch.fx could not trace the model: in module {qual!r} ({where[1]}): "
            f"{type(e).__name__}: {e}\n"
            f"Fix: {leaf_hint}fix data-dependent Python control flow with "
            "convert(..., concrete_args={...})."
        ) from e
    return TraceResult(
        graph=graph, module_outputs=tracer.module_outputs, module_inputs=tracer.module_inputs
    )


def parent_name(target: str) -> tuple[str, str]:
    """``"a.b.c"`` -> ``("a.b", "c")``."""
    *parent, name = target.rsplit(".", 1)
    return (parent[0] if parent else ""), name


def replace_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent, name = parent_name(target)
    setattr(root.get_submodule(parent) if parent else root, name, new)


def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Run ShapeProp in eval mode and no_grad, so BN running statistics are not touched."""
    from torch.fx.passes.shape_prop import ShapeProp

    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    finally:
        gm.train(was_training)


def node_shape(node: fx.Node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def trunk_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The tensor nodes that every path from the input to the output passes through.

    In a graph in execution order, node i is such a cut point when no tensor edge from an
    earlier node that depends on the input lands after i: a block's output after its residual
    add is one; the nodes inside the block, which the skip connection jumps over, are not.
    Edges from constants (parameters, ``get_attr``) and from shape queries are ignored.
    """
    nodes = list(graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    live: set[fx.Node] = set()  # depends on a placeholder
    trunk: set[fx.Node] = set()
    reach = 0  # the furthest user of any earlier live tensor
    for i, node in enumerate(nodes):
        if node.op == "placeholder" or any(a in live for a in node.all_input_nodes):
            live.add(node)
        is_tensor = isinstance(node.meta.get("tensor_meta"), TensorMetadata)
        if node in live and is_tensor and reach <= i and node.op != "output":
            trunk.add(node)
        if node in live and is_tensor:
            reach = max(reach, *(index[u] for u in node.users), i)
    return trunk


# --- inline SE: x * gate(W2 act(W1 pool(x))) written without an SE module ----------------------

_SHAPE_METHODS = {"view", "reshape", "flatten", "unsqueeze", "squeeze", "expand_as", "expand",
                  "contiguous", "to", "type_as", "float"}  # fmt: skip
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unsqueeze, torch.squeeze}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "hardsigmoid", "tanh"}
_ACT_FUNCTIONS = {"relu", "relu6", "silu", "gelu", "hardswish", "sigmoid", "hardsigmoid",
                  "leaky_relu", "tanh"}  # fmt: skip
_GATE_NAMES = {"sigmoid", "sigmoid_", "hardsigmoid", "hard_sigmoid"}
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid,
                nn.Tanh, nn.Identity, nn.LeakyReLU)  # fmt: skip
_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)


def _fn_name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _is_gate(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _GATE_MODULES)
    if node.op in ("call_function", "call_method"):
        return _fn_name(node) in _GATE_NAMES
    return False


def _is_act(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _ACT_MODULES)
    if node.op == "call_method":
        return node.target in _ACT_METHODS
    if node.op == "call_function":
        module = getattr(node.target, "__module__", "")
        return module in ("torch.nn.functional", "torch") and _fn_name(node) in _ACT_FUNCTIONS
    return False


def _is_shape_query(node: fx.Node) -> bool:
    """``t.shape`` / ``t.size()`` / ``t.dim()``: reads metadata only, not the values."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim")
    return node.op == "call_method" and node.target in ("size", "dim")


def _value_users(node: fx.Node) -> list[fx.Node]:
    """Users that read ``node``'s values (``s.view(s.shape[0], -1, 1, 1)`` counts once)."""
    return [u for u in node.users if not _is_shape_query(u)]


def _is_shape_op(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target in _SHAPE_FUNCTIONS


def _is_learned_map(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op != "call_module":
        return False
    m = gm.get_submodule(node.target)
    if isinstance(m, nn.Linear):
        return True
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.groups == 1
        and m.stride == (1, 1)
    )


def _global_avg_pool_input(node: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
    """If ``node`` is a global average pool of a 4-D map, return that map's node."""
    args = node.args
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            return args[0]
        return None
    name = _fn_name(node)
    if node.op == "call_function" and name == "adaptive_avg_pool2d":
        size = args[1] if len(args) > 1 else node.kwargs.get("output_size")
        return args[0] if size in (1, (1, 1), [1, 1]) else None
    if node.op in ("call_function", "call_method") and name == "mean":
        dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
        if isinstance(dims, (tuple, list)) and sorted(dims) in ([2, 3], [-2, -1]):
            return args[0]
    return None


@dataclass
class InlineSE:
    """A recognised inline SE: ``mul`` = feature * gate(...), ``w1`` its first learned map."""

    mul: fx.Node
    feature: fx.Node
    w1: fx.Node


def find_inline_se(gm: fx.GraphModule) -> list[InlineSE]:
    """Find ``x * gate(W2 act(W1 pool(x)))`` subgraphs (with any reshapes in between)."""
    import operator

    found = []
    for node in gm.graph.nodes:
        is_mul = (node.op == "call_function" and node.target in (operator.mul, torch.mul)) or (
            node.op == "call_method" and node.target == "mul"
        )
        if not is_mul or len(node.args) != 2:
            continue
        for feat, gate in (node.args, node.args[::-1]):
            if not (isinstance(feat, fx.Node) and isinstance(gate, fx.Node)):
                continue
            maps, cur, saw_gate, src = [], gate, False, None
            while isinstance(cur, fx.Node):
                src = _global_avg_pool_input(cur, gm)
                if src is not None:
                    break
                if len(_value_users(cur)) != 1:
                    cur = None
                    break
                if _is_learned_map(cur, gm):
                    maps.append(cur)
                elif _is_gate(cur, gm) and not maps:
                    saw_gate = True
                elif not (_is_act(cur, gm) or _is_shape_op(cur)):
                    cur = None
                    break
                cur = cur.args[0] if cur.args else None
            if cur is None or src is not feat or not maps or not saw_gate:
                continue
            found.append(InlineSE(mul=node, feature=feat, w1=maps[-1]))
            break
    return found
