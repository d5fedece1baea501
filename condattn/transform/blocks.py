"""Where :func:`condattn.add_attention` puts attention: the blocks of a traced CNN and, for each,
the position of the new block.

**Blocks** (the rule, on a traced and shape-propagated graph):

1. Take the modules whose output is on the trunk (a node every input-to-output path passes
   through, as for ``aux_at="auto"``: not the inside of a residual block), is a 4-D NCHW tensor
   (its height and width are reduced alike from the input's: NHWC token maps are not), and
   comes before the first global pool.
2. Keep those that are or contain a ``Conv2d`` and have submodules (a residual block, a
   ``Conv2dNormActivation``, a dense block, a stage of timm's): the *deepest* such module per
   trunk node (``layer1.0``, not ``layer1``).
3. A flat ``Sequential`` of two or more convs (VGG's ``features``: conv, bn, relu, pool, conv, ...)
   is split into conv units: each ends at the layer just before the next conv or pool.

Each block's **stage** is its reduction ``r = 2 ** round(log2(input size / its size))``, the
downsampling-stride rule of ``aux_at="auto"`` (:mod:`condattn.transform.placement`). A model
whose conv blocks span fewer than two stages is not a CNN for this pass (a pure transformer has
one: its patch embedding).

**Positions** (Hu et al., SE paper Table 14):

- ``"standard"``: the block is residual and the pattern is recognisable (its output is
  ``act(branch + shortcut)`` or ``branch + shortcut``, the shortcut being its input or a short
  path from it, the branch holding a conv): the attention goes on the branch, before the add.
- ``"post"`` (SE-POST): anything else, a block that fx keeps whole included: after the block.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

from condattn.transform.fxutils import _is_act, node_shape, trunk_nodes
from condattn.transform.placement import _is_global_pool
from condattn.transform.tracing import Traced

__all__ = ["POSITIONS", "POST", "STANDARD", "Block", "Site", "find_blocks", "locate"]

STANDARD = "standard"  # on the residual branch, before the add
POST = "post"  # after the block
POSITIONS = (STANDARD, POST)

_ADDS = (operator.add, operator.iadd, torch.add)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Block:
    """A block of the trunk: its module name and its stage (reduction r)."""

    name: str
    reduction: float


@dataclass(frozen=True)
class Site:
    """Where one block's attention goes in one graph.

    Attributes:
        position: ``"standard"`` or ``"post"``.
        node: the tensor the attention reads: the branch (standard) or the block's output.
        add: the residual add whose branch input it replaces (standard only).
    """

    position: str
    node: fx.Node
    add: fx.Node | None = None


def _axis_reduction(size: int, now: int) -> float:
    return float(2 ** round(math.log2(size / now))) if now > 0 else math.inf


def _reduction(t: Traced, node: fx.Node) -> float | None:
    """r of a 4-D NCHW output, or None when H and W are not reduced alike (NHWC, tokens)."""
    size, shape = node_shape(t.input), node_shape(node)
    rh, rw = _axis_reduction(size[2], shape[2]), _axis_reduction(size[3], shape[3])
    return rh if rh == rw else None


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _is_flat(module: nn.Module) -> bool:
    """A ``Sequential`` of plain layers (no residual block is one: its forward is its own)."""
    children = list(module.children())
    plain = bool(children) and not any(next(c.children(), None) for c in children)
    return isinstance(module, nn.Sequential) and plain


def _end_position(t: Traced, trunk: set[fx.Node], order: Mapping[fx.Node, int]) -> int:
    """The position of the first global pool on the trunk (or of the logits)."""
    pools = [
        order[node]
        for name, node in t.outputs.items()
        if node in trunk and _is_global_pool(t.gm, name, node)
    ]
    return min(pools, default=order[t.logits])


def _units(model: nn.Module, name: str, usable: Mapping[str, fx.Node]) -> list[str]:
    """The conv units of a flat container: the layer before each next conv or pool."""
    children = list(model.get_submodule(name).named_children())
    ends = []
    for (child, module), (_, after) in zip(children, [*children[1:], (None, None)]):
        if isinstance(module, (nn.Conv2d, *_POOLS)):
            continue
        if after is None or isinstance(after, (nn.Conv2d, *_POOLS)):
            ends.append(f"{name}.{child}")
    return [e for e in ends if e in usable]


def find_blocks(t: Traced, model: nn.Module) -> list[Block]:
    """The blocks of ``t`` (a trace of ``model``), in network order (the module docstring)."""
    graph = t.gm.graph
    order = t.order()
    trunk = trunk_nodes(graph)
    end = _end_position(t, trunk, order)
    usable = {
        name: node
        for name, node in t.outputs.items()
        if node in trunk and order[node] <= end and _reduction(t, node) is not None
    }
    convs = {
        name
        for name in usable
        if next(model.get_submodule(name).children(), None) is not None
        and _has_conv(model.get_submodule(name))
    }
    deepest = [n for n in convs if not any(o.startswith(n + ".") for o in convs)]
    names: list[str] = []
    for name in deepest:
        module = model.get_submodule(name)
        flat = _is_flat(module) and sum(isinstance(m, nn.Conv2d) for m in module.children()) > 1
        names.extend(_units(model, name, usable) if flat else [name])
    by_node: dict[fx.Node, str] = {}
    for name in sorted(names, key=lambda n: (order[usable[n]], -n.count("."))):
        by_node.setdefault(usable[name], name)
    ordered = sorted(by_node.items(), key=lambda kv: order[kv[0]])
    return [Block(name, _reduction(t, node)) for node, name in ordered]


# --- positions ---------------------------------------------------------------------------------


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADDS
    return node.op == "call_method" and node.target in ("add", "add_")


def _is_conv(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.Conv2d)
    return node.op == "call_function" and getattr(node.target, "__name__", "") == "conv2d"


def _after(node: fx.Node, x: fx.Node, order: Mapping[fx.Node, int]) -> set[fx.Node] | None:
    """The nodes between ``x`` and ``node`` that ``node`` depends on (``node`` included), or
    None when ``node`` does not depend on ``x``."""
    seen: set[fx.Node] = set()
    stack, reached = [node], node is x
    while stack:
        n = stack.pop()
        if n is x or n in seen:
            continue
        seen.add(n)
        for a in n.all_input_nodes:
            reached |= a is x
            if order[a] > order[x]:
                stack.append(a)
    return seen if reached else None


def _residual(t: Traced, out: fx.Node, x: fx.Node | None) -> Site | None:
    """The standard position of a block whose output is ``out`` and input ``x``, or None."""
    if x is None:
        return None
    order = t.order()
    add = out.all_input_nodes[0] if _is_act(out, t.gm) and len(out.all_input_nodes) == 1 else out
    tensors = [a for a in add.args[:2] if isinstance(a, fx.Node)] if _is_add(add) else []
    if len(tensors) != 2 or any(node_shape(a) != node_shape(add) for a in tensors):
        return None
    paths = [_after(a, x, order) for a in tensors]
    if any(p is None for p in paths) or len(paths[0]) == len(paths[1]):
        return None
    branch, path = max(zip(tensors, paths), key=lambda bp: len(bp[1]))
    if not any(_is_conv(n, t.gm) for n in path):
        return None
    return Site(STANDARD, branch, add)


def locate(t: Traced, block: Block, *, leaf: bool) -> Site:
    """Where ``block``'s attention goes in ``t``: on its residual branch or after it."""
    out = t.outputs[block.name]
    site = None if leaf else _residual(t, out, t.inputs.get(block.name))
    return site if site is not None else Site(POST, out)
