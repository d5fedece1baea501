"""Step 3 of :func:`condattn.convert`, shared with discovery: trace a model, propagate shapes, and
collect its attention sites (both routes).

Part of the transform layer (docs/design.md, 2.2): :mod:`condattn.convert` runs it as step 3, and
:mod:`condattn.transform.discovery` (``list_stages``, ``list_attention``, ``auto_aux_at``) runs
it to show the same names and sites without converting.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from condattn.nn import CondLinear
from condattn.transform.fxutils import ConversionError, find_inline_se, node_shape, propagate_shapes
from condattn.transform.fxutils import trace as fx_trace
from condattn.transform.inplace import GRAPH, INPLACE, InnerAttention, InnerSite
from condattn.transform.mappings import Builder, as_builder, get_attention_mapping

INLINE_SE = "inline SE"  # the kind of an SE written inline (its W1 is swapped for a CondLinear)


@dataclass
class Attention:
    """One swappable attention site. Every site is collected here, in one place (step 3), so
    that a second route (attention inside a leaf) can be added beside the graph route."""

    node: fx.Node  # the call that receives T: a module call, or an inline SE's W1
    kind: str  # the source type's name, or INLINE_SE
    build: Builder  # build(src, *, channels=C, cond_dim=n, init=...) -> twin
    channels: int | None  # C, the channels of the node's input as traced
    route: str = GRAPH  # or INPLACE: inside a leaf module (condattn.transform.inplace)


@dataclass
class Traced:
    gm: fx.GraphModule
    outputs: dict[str, fx.Node]  # module name -> output node (4-D outputs only)
    attention: dict[str, Attention]  # attention name -> site, in network order
    input: fx.Node
    logits: fx.Node
    like: dict[str, Any]  # device and dtype of the model's parameters: new modules follow them
    inputs: dict[str, fx.Node] = field(default_factory=dict)  # module name -> its input node

    def order(self) -> dict[fx.Node, int]:
        return {n: i for i, n in enumerate(self.gm.graph.nodes)}


def check_mapping(mapping: Mapping[type[nn.Module], Any] | None) -> dict[type[nn.Module], Any]:
    if mapping is None:
        return get_attention_mapping()
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a dict of type -> twin, got {type(mapping).__name__}")
    for src_type, value in mapping.items():
        if not (isinstance(src_type, type) and issubclass(src_type, nn.Module)):
            raise TypeError(f"mapping keys must be nn.Module subclasses, got {src_type!r}")
        as_builder(value)
    return dict(mapping)


def default_example(model: nn.Module) -> torch.Tensor:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    p = next(iter(model.parameters()), None)
    cin = first_conv.in_channels if first_conv is not None else 3
    kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    return torch.zeros(1, cin, 32, 32, **kw)


def like(module: nn.Module) -> dict[str, Any]:
    """``device`` and ``dtype`` of a module's first floating-point parameter (or nothing)."""
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {}


def _in_channels(node: fx.Node) -> int | None:
    arg = node.args[0] if node.args else None
    shape = node_shape(arg) if isinstance(arg, fx.Node) else None
    return int(shape[1]) if shape is not None and len(shape) > 1 else None


def _collect_attention(
    gm: fx.GraphModule,
    mapping: Mapping[type[nn.Module], Any],
    inner: Sequence[InnerSite] = (),
) -> dict[str, Attention]:
    """Every swappable attention site: module calls of a mapped type, inline SEs' W1, and the
    ``inner`` attention found inside leaf modules (the in-place route,
    :mod:`condattn.transform.inplace`), which sits at its leaf's position in the network order."""
    found: dict[fx.Node, tuple[str, Attention]] = {}
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in seen:
            src_type = type(gm.get_submodule(node.target))
            if src_type in mapping:
                seen.add(node.target)
                site = Attention(node, src_type.__name__, as_builder(mapping[src_type]), None)
                found[node] = (node.target, site)
    for se in find_inline_se(gm):
        found[se.w1] = (se.w1.target, Attention(se.w1, INLINE_SE, CondLinear.from_module, None))
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    sites = dict(v for _, v in sorted(found.items(), key=lambda kv: order[kv[0]]))
    for site in sites.values():
        site.channels = _in_channels(site.node)
    for s in inner:
        sites[s.name] = Attention(s.node, s.kind, s.build, s.channels, route=INPLACE)
    return dict(sorted(sites.items(), key=lambda kv: order[kv[1].node]))  # stable: inner in order


def _logits_node(gm: fx.GraphModule) -> fx.Node:
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    logits = out_node.args[0]
    shape = node_shape(logits) if isinstance(logits, fx.Node) else None
    if shape is None or len(shape) != 2:
        raise ConversionError(
            "the model must return one (batch, num_classes) tensor of logits; it returns "
            f"{logits!r}. Wrap it so that forward returns the logits only."
        )
    return logits


def trace(
    model: nn.Module,
    mapping: Mapping[type[nn.Module], Any],
    leaf_modules: Sequence[str | type[nn.Module]],
    concrete_args: dict[str, Any] | None,
    example: torch.Tensor,
) -> Traced:
    res = fx_trace(
        model, leaf_types=tuple(mapping), leaf_modules=leaf_modules, concrete_args=concrete_args
    )
    gm = fx.GraphModule(model, res.graph, class_name=type(model).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise ConversionError("the traced model has no input")
    inner = InnerAttention(gm, mapping)  # attention inside leaves: found as it runs
    try:
        with inner.recording():
            propagate_shapes(gm, example)
    except Exception as e:
        raise ConversionError(
            f"running the traced model on an example input of shape {tuple(example.shape)} "
            f"failed ({type(e).__name__}: {e}); pass example_input= with a valid input"
        ) from e
    logits = _logits_node(gm)
    outputs = {
        name: node
        for name, node in res.module_outputs.items()
        if name and (s := node_shape(node)) is not None and len(s) == 4
    }
    attention = _collect_attention(gm, mapping, inner.sites())
    inputs = {name: node for name, node in res.module_inputs.items() if name in outputs}
    return Traced(gm, outputs, attention, placeholders[0], logits, like(model), inputs)


def unknown(kind: str, name: str, valid: Sequence[str], hint: str) -> ConversionError:
    close = difflib.get_close_matches(name, valid, n=3)
    shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
    did = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ConversionError(f"unknown {kind} {name!r}.{did} Valid choices: {shown}. {hint}")


def stages_with_attention(t: Traced) -> dict[str, list[str]]:
    """Each valid ``aux_at`` name -> the attention after it (what one head there would feed)."""
    order = t.order()
    return {
        name: [a for a, site in t.attention.items() if order[site.node] > order[node]]
        for name, node in t.outputs.items()
    }


def trace_modes(
    model: nn.Module,
    mapping: Mapping[type[nn.Module], Any],
    leaf_modules: Sequence[str | type[nn.Module]],
    concrete_args: dict[str, Any] | None,
    example: torch.Tensor,
) -> dict[bool, Traced]:
    """:func:`trace` of ``model`` in train mode (key True) and in eval mode (False), over the
    same modules; ``model``'s mode is restored. fx freezes ``self.training`` into a graph, so a
    pass that must follow ``.train()``/``.eval()`` edits both (:mod:`condattn.transform.modes`).
    """
    was_training = model.training
    traces: dict[bool, Traced] = {}
    try:
        for mode in (True, False):
            model.train(mode)
            traces[mode] = trace(model, mapping, leaf_modules, concrete_args, example)
    finally:
        model.train(was_training)
    return traces
