"""Drop-in use of a converted model: :func:`logits_only`, a forward that returns the logits only.

Part of the transform layer (docs/design.md, 2.2): it rewrites the graph :func:`condattn.convert`
made and keeps its records (:mod:`condattn.transform.config`).
"""

from __future__ import annotations

import torch
from torch import fx

from condattn.outputs import CondOutput
from condattn.transform.config import CONFIG, SWAPS, get_config, record, swaps_of
from condattn.transform.modes import DualGraphModule, carry_face, map_graphs

__all__ = ["logits_only"]


def _head_part(out: fx.Node) -> set[fx.Node]:
    """The aux-logits nodes of a converted graph and the softmax / detach chain after each."""
    part, todo = set(), list(out.args[0].args[1])
    while todo:
        node = todo.pop()
        part.add(node)
        todo += [u for u in node.users if u.target in (torch.softmax, "detach")]
    return part


def _logits_only(graph: fx.Graph) -> fx.Graph:
    out = next(n for n in graph.nodes if n.op == "output")
    packed = out.args[0]
    assert packed.op == "call_function" and packed.target is CondOutput, packed.format_node()
    heads = _head_part(out)
    out.args = (packed.args[0],)
    graph.erase_node(packed)
    graph.eliminate_dead_code(is_impure_node=lambda node: node not in heads)
    graph.lint()
    return graph


def logits_only(model: DualGraphModule) -> DualGraphModule:
    """A drop-in classifier: the converted ``model`` with a forward that returns the logits only.

    For code that expects a tensor (``F.cross_entropy(m(x), y)``, ``m(x).argmax(1)``, evaluation
    tools). The heads still compute T inside wherever it feeds attention (SE-R), so the logits are
    exactly ``model(x).logits``; heads that feed nothing (SE-A) are left out. The result shares
    its parameters and buffers with ``model``, returns one type (a tensor) in train and eval, and
    keeps the conversion config (:func:`get_config`). Train with ``model`` itself to use the aux
    losses.

    Raises:
        ValueError: if ``model`` was not made by :func:`convert`.
    """
    config = get_config(model)
    gm = map_graphs(model, _logits_only, class_name=f"{type(model).__name__}LogitsOnly")
    carry_face(gm, model)
    record(gm, CONFIG, config)
    record(gm, SWAPS, swaps_of(model))
    return gm
