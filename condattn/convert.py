"""``condattn.convert``: rewrite any CNN into its SE-A / SE-R form with torch.fx.

The pass (design.md, layer 2) is one named function per step; :func:`convert` calls them in order:

1. :func:`_validate` the arguments, and refuse a model that is already converted;
2. :func:`_copy` the model, so the caller's model is never mutated;
3. :func:`condattn._tracing.trace` with every swappable attention type as a leaf, propagate
   shapes, and collect the attention sites; then :func:`_resolve_aux_at`;
4. :func:`_insert_heads`: an aux head after each ``aux_at`` node (and the auxiliary model);
5. :func:`_route`: which attention each head conditions;
6. :func:`_swap` each routed attention node for its ``Cond*`` twin and append T to its args;
7. :func:`_rewire_output` to ``CondOutput(logits, aux_logits)``;
8. :func:`_finish`: ``graph.lint()``, ``recompile()``, and the conversion config.

The rest of the transform layer around it: :mod:`condattn._tracing` (step 3, shared with
discovery), :mod:`condattn.discovery` (``list_stages``, ``list_attention``, ``auto_aux_at``),
:mod:`condattn.convert_config` (the recorded :class:`ConvertConfig`), :mod:`condattn.dropin`
(``logits_only``), :mod:`condattn._placement` (``aux_at="auto"``) and :mod:`condattn._inplace`
(the in-place route).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from condattn._fx import ConversionError, node_shape, replace_submodule
from condattn._inplace import INPLACE
from condattn._inplace import swap as inplace_swap
from condattn._placement import AUTO, Placement, auto_placement
from condattn._tracing import (
    Traced,
    check_mapping,
    default_example,
    like,
    stages_with_attention,
    trace,
    unknown,
)
from condattn.convert_config import CONFIG, SWAPS, ConvertConfig, Swap, get_config, record, recorded
from condattn.mappings import cond_types
from condattn.nn import AuxHead
from condattn.nn._common import INITS
from condattn.outputs import CondOutput

__all__ = ["ConversionError", "ConvertConfig", "Placement", "convert", "get_config"]

CONDS = ("logits", "probs")
AUX_MODEL = "aux_model"  # the name of the section 5.6 auxiliary model inside a converted model
AUX_HEAD_KEYS = ("pool_size", "width", "hidden")


# --- what the steps pass to each other ---------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    """The validated options of one conversion (step 1)."""

    aux_at: tuple[str, ...]
    num_classes: int | None
    conditioned: bool
    cond: str
    detach_cond: bool
    aux_dropout: float
    init: str
    aux_head: dict[str, int]
    mapping: dict[type[nn.Module], Any]
    example_shape: tuple[int, ...] = ()
    placement: str = "given"  # or the reason of aux_at="auto"'s choice


@dataclass(frozen=True)
class _Head:
    name: str  # an aux_at entry, or AUX_MODEL
    out: fx.Node  # the head's logits (returned in aux_logits)
    cond: fx.Node  # T as fed to the attention (after the optional softmax / detach)


# --- step 1: validate --------------------------------------------------------------------------


def _check_not_converted(model: nn.Module, mapping: Mapping[type[nn.Module], Any]) -> None:
    if recorded(model, CONFIG) is not None:
        raise ConversionError(
            "this model is already converted (it has a condattn config); convert the original "
            "model instead, or load a saved conversion with condattn.load(path, base_model)"
        )
    twins = (*cond_types(mapping), AuxHead)
    for name, m in model.named_modules():
        if isinstance(m, twins):
            raise ConversionError(
                f"this model already contains a condattn {type(m).__name__} at {name!r}: it looks "
                "converted. Convert the original model instead."
            )


def _check_aux_at(aux_at: Sequence[str] | str) -> tuple[str, ...] | str:
    if aux_at == AUTO:
        return AUTO
    aux_at = (aux_at,) if isinstance(aux_at, str) else tuple(aux_at)
    if not all(isinstance(a, str) for a in aux_at):
        raise TypeError(f"aux_at must be a list of module names, got {aux_at!r}")
    if len(set(aux_at)) != len(aux_at):
        raise ValueError(f"aux_at has duplicates: {aux_at}")
    return aux_at


def _validate(model: nn.Module, aux_at, *, aux_model, aux_head, mapping, **opts) -> _Options:
    aux_at = _check_aux_at(aux_at)
    if not aux_at and aux_model is None:
        raise ValueError("give at least one aux_at stage, or an aux_model= (paper section 5.6)")
    if opts["cond"] not in CONDS:
        raise ValueError(f"cond must be one of {CONDS}, got {opts['cond']!r}")
    if opts["init"] not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {opts['init']!r}")
    if not 0.0 <= opts["aux_dropout"] < 1.0:
        raise ValueError(f"aux_dropout must be in [0, 1), got {opts['aux_dropout']}")
    n = opts["num_classes"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
        raise ValueError(f"num_classes must be a positive int, got {n!r}")
    if aux_model is not None and not isinstance(aux_model, nn.Module):
        raise TypeError(f"aux_model must be an nn.Module, got {type(aux_model).__name__}")
    head_kw = {"pool_size": 4, "width": 128, "hidden": 1024, **(aux_head or {})}
    if set(head_kw) - set(AUX_HEAD_KEYS):
        raise ValueError(f"aux_head takes {', '.join(AUX_HEAD_KEYS)}; got {sorted(aux_head)}")
    mapping = check_mapping(mapping)
    _check_not_converted(model, mapping)
    return _Options(aux_at=aux_at, aux_head=head_kw, mapping=mapping, **opts)


# --- step 2: deep-copy -------------------------------------------------------------------------


def _copy(model: nn.Module, aux_model: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    return copy.deepcopy(model), (copy.deepcopy(aux_model) if aux_model is not None else None)


# --- step 3: trace -----------------------------------------------------------------------------


def _num_classes(t: Traced, given: int | None) -> int:
    """n, the length of T: the logits' width; a ``num_classes=`` that disagrees is an error."""
    traced = int(node_shape(t.logits)[1])
    if given is not None and given != traced:
        raise ConversionError(
            f"num_classes={given}, but the model's logits have {traced} classes (traced shape "
            f"{tuple(node_shape(t.logits))}); pass num_classes={traced} or leave it out"
        )
    return traced


def _resolve_aux_at(t: Traced, opts: _Options) -> _Options:
    """``aux_at="auto"`` becomes the names its rule picks (:mod:`condattn._placement`)."""
    if opts.aux_at != AUTO:
        _check_stages(t, opts.aux_at)
        return opts
    sites = [site.node for site in t.attention.values()]
    chosen = auto_placement(t.gm, t.outputs, sites, conditioned=opts.conditioned)
    return replace(opts, aux_at=chosen.aux_at, placement=chosen.reason)


def _check_stages(t: Traced, aux_at: Sequence[str]) -> None:
    """Every ``aux_at`` entry is a module with a 4-D output, and they are in network order."""
    order = t.order()
    for name in aux_at:
        if name not in t.outputs:
            raise unknown("aux_at stage", name, list(t.outputs), "See condattn.list_stages(model).")
    positions = [order[t.outputs[a]] for a in aux_at]
    if positions != sorted(positions):
        ordered = sorted(aux_at, key=lambda a: order[t.outputs[a]])
        raise ConversionError(f"aux_at must be listed in network order: {ordered}")


# --- step 4: insert the heads ------------------------------------------------------------------


def _check_aux_model(aux_model: nn.Module, example: torch.Tensor, n: int) -> None:
    """The auxiliary model must return one ``(batch, n)`` tensor in eval (and so train) mode."""
    was_training = aux_model.training
    aux_model.eval()
    try:
        with torch.no_grad():
            out = aux_model(example)
    finally:
        aux_model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != n:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConversionError(
            f"aux_model must return one (batch, {n}) tensor of logits, the classes of the main "
            f"model; it returned {got}. Build it with num_classes={n} (and, for torchvision's "
            "GoogLeNet, aux_logits=False)."
        )


def _cond_of(graph: fx.Graph, out: fx.Node, opts: _Options) -> fx.Node:
    """T as the attention reads it: the head's logits, optionally softmaxed and detached."""
    t = out
    if opts.cond == "probs":
        with graph.inserting_after(t):
            t = graph.call_function(torch.softmax, (t,), {"dim": 1})
    if opts.detach_cond:
        with graph.inserting_after(t):
            t = graph.call_method("detach", (t,))
    return t


def _insert_heads(
    t: Traced, opts: _Options, *, n: int, aux_model: nn.Module | None, example: torch.Tensor
) -> list[_Head]:
    """Add ``aux1``, ``aux2``, ... after the ``aux_at`` nodes (and the aux model after the
    input); returns the heads in network order."""
    gm, graph = t.gm, t.gm.graph
    outs: list[tuple[str, fx.Node]] = []
    if aux_model is not None:
        _check_aux_model(aux_model, example, n)
        gm.add_submodule(AUX_MODEL, aux_model)
        with graph.inserting_after(t.input):
            outs.append((AUX_MODEL, graph.call_module(AUX_MODEL, (t.input,))))
    used = {name for name, _ in gm.named_modules()}
    for i, name in enumerate(opts.aux_at, start=1):
        stage = t.outputs[name]
        target = f"aux{i}"
        while target in used:
            target = "_" + target
        head = AuxHead(node_shape(stage)[1], n, dropout=opts.aux_dropout, **opts.aux_head)
        gm.add_submodule(target, head.to(**t.like))
        with graph.inserting_after(stage):
            outs.append((name, graph.call_module(target, (stage,))))
    return [_Head(name, out, _cond_of(graph, out, opts)) for name, out in outs]


# --- step 5: route -----------------------------------------------------------------------------


def _default_routing(t: Traced, heads: Sequence[_Head]) -> dict[str, tuple[str, ...]]:
    """The paper's routing: each attention module is fed by the nearest head before it."""
    order = t.order()
    routing: dict[str, list[str]] = {h.name: [] for h in heads}
    for att, site in t.attention.items():
        before = [h.name for h in heads if order[h.out] < order[site.node]]
        if before:
            routing[before[-1]].append(att)
    return {h: tuple(v) for h, v in routing.items()}


def _user_routing(
    t: Traced, heads: Sequence[_Head], feeds: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """``feeds``: head -> attention names or prefixes; each must come after its head."""
    order = t.order()
    names = [h.name for h in heads]
    unknown_heads = set(feeds) - set(names)
    if unknown_heads:
        raise ConversionError(
            f"feeds names heads {sorted(unknown_heads)} that are not in aux_at/aux_model: {names}"
        )
    routing: dict[str, list[str]] = {h: [] for h in names}
    taken: dict[str, str] = {}
    head_out = {h.name: h.out for h in heads}
    for h, atts in feeds.items():
        for a in [atts] if isinstance(atts, str) else atts:
            matched = [m for m in t.attention if m == a or m.startswith(a + ".")]
            if not matched:
                raise unknown(
                    "attention module", a, list(t.attention), "See condattn.list_attention(model)."
                )
            for m in matched:
                if order[t.attention[m].node] <= order[head_out[h]]:
                    raise ConversionError(
                        f"head {h!r} cannot feed {m!r}: that attention runs before the head's "
                        "output exists. Feed only attention that comes after the head."
                    )
                if m in taken and taken[m] != h:
                    raise ConversionError(f"{m!r} is fed by two heads: {taken[m]!r} and {h!r}")
                taken[m] = h
                routing[h].append(m)
    return {h: tuple(v) for h, v in routing.items()}


def _route(
    t: Traced,
    heads: Sequence[_Head],
    feeds: Mapping[str, Sequence[str]] | None,
    *,
    conditioned: bool,
) -> dict[str, tuple[str, ...]]:
    """Head name -> the attention it conditions (none at all for SE-A)."""
    if not conditioned:
        return {h.name: () for h in heads}
    if feeds is not None:
        return _user_routing(t, heads, feeds)
    routing = _default_routing(t, heads)
    for h, atts in routing.items():
        if not atts:
            with_att = [s for s, v in stages_with_attention(t).items() if v]
            raise ConversionError(
                f"aux head at {h!r} has no attention module after it to condition. Stages "
                f"followed by attention: {with_att or 'none'}. Use conditioned=False for "
                "heads only (SE-A), or register your attention type with "
                "condattn.register_attention."
            )
    return routing


# --- step 6: swap ------------------------------------------------------------------------------


def _swap(
    t: Traced, heads: Sequence[_Head], routing: Mapping[str, Sequence[str]], *, n: int, init: str
) -> dict[str, Swap]:
    """Replace each routed attention module by its twin (on its source's device and dtype);
    every call of it gets T appended. Returns how each twin was built."""
    gm = t.gm
    swaps: dict[str, Swap] = {}
    calls: dict[str, list[fx.Node]] = {}
    for x in gm.graph.nodes:
        if x.op == "call_module":
            calls.setdefault(x.target, []).append(x)
    cond = {h.name: h.cond for h in heads}
    inplace: list[tuple[str, fx.Node, nn.Module, fx.Node]] = []
    for h, atts in routing.items():
        for att in atts:
            site = t.attention[att]
            if site.channels is None:
                raise ConversionError(f"the input of attention {att!r} has no traced channel count")
            src = gm.get_submodule(att)  # att is site.node.target on the graph route
            twin = site.build(src, channels=site.channels, cond_dim=n, init=init)
            twin = twin.to(**(like(src) or t.like))
            skeleton = copy.deepcopy(src).to("meta")
            swaps[att] = Swap(skeleton, site.build, site.channels, n)
            if site.route == INPLACE:  # inside a leaf: T is delivered at run time
                inplace.append((att, site.node, twin, cond[h]))
                continue
            replace_submodule(gm, att, twin)
            for call in calls.get(site.node.target, ()):  # every call of a shared module gets T
                call.args = (*call.args, cond[h])
    inplace_swap(gm, inplace)
    return swaps


# --- step 7: rewire the output -----------------------------------------------------------------


def _rewire_output(t: Traced, heads: Sequence[_Head]) -> None:
    graph = t.gm.graph
    out = next(x for x in graph.nodes if x.op == "output")
    with graph.inserting_before(out):
        packed = graph.call_function(CondOutput, (t.logits, tuple(h.out for h in heads)))
    out.args = (packed,)


# --- step 8: lint, recompile, record -----------------------------------------------------------


def _config(opts: _Options, *, n: int, feeds, aux_model, leaf_modules) -> ConvertConfig:
    """What :func:`condattn.load` needs to redo the conversion (``example_shape`` included)."""
    return ConvertConfig(
        aux_at=opts.aux_at,
        num_classes=n,
        feeds={h: tuple(v) for h, v in feeds.items()},
        conditioned=opts.conditioned,
        cond=opts.cond,
        detach_cond=opts.detach_cond,
        aux_dropout=opts.aux_dropout,
        init=opts.init,
        aux_model=aux_model is not None,
        aux_head=opts.aux_head,
        leaf_modules=tuple(x for x in leaf_modules if isinstance(x, str)),
        example_shape=opts.example_shape,
        placement=opts.placement,
    )


def _finish(
    gm: fx.GraphModule, *, training: bool, config: ConvertConfig, swaps: dict[str, Swap]
) -> fx.GraphModule:
    gm.graph.lint()
    gm.recompile()
    gm.train(training)
    record(gm, CONFIG, config)
    record(gm, SWAPS, swaps)
    return gm


# --- the pass ----------------------------------------------------------------------------------


def convert(
    model: nn.Module,
    aux_at: Sequence[str] | str = AUTO,
    *,
    num_classes: int | None = None,
    feeds: Mapping[str, Sequence[str]] | None = None,
    conditioned: bool = True,
    cond: str = "logits",
    detach_cond: bool = False,
    aux_dropout: float = 0.7,
    init: str = "zeros",
    aux_model: nn.Module | None = None,
    aux_head: Mapping[str, int] | None = None,
    example_input: torch.Tensor | None = None,
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
    mapping: Mapping[type[nn.Module], Any] | None = None,
) -> fx.GraphModule:
    """Insert aux heads into ``model`` and feed their logits T to the attention after them.

    Args:
        model: any CNN that returns logits; it is not modified.
        aux_at: ``"auto"`` (the paper's placement read from the graph's strides, see
            :func:`auto_aux_at`), or qualified module names (as in ``named_modules()``) after
            whose output an aux head goes, in network order; see :func:`list_stages`.
        num_classes: n; inferred from the logits when None.
        feeds: head name (an ``aux_at`` entry, or ``"aux_model"``) -> attention names (or name
            prefixes such as ``"layer3"``) it conditions. Default: the paper's routing, each
            attention module is fed by the nearest head before it.
        conditioned: False gives SE-A: heads and their outputs, attention untouched.
        cond: ``"logits"`` (our reading of the paper's T: raw aux logits; the paper does not say
            whether T is normalised) or ``"probs"`` (softmax of the logits).
        detach_cond: stop the attention's gradient from flowing back into the heads through T.
        aux_dropout: dropout of the aux heads (paper 0.7; Table 5).
        init: T-column init of the twins: ``"zeros"`` keeps the original function exactly (safe
            for trained models); ``"default"`` is PyTorch's init, as when training from scratch.
        aux_model: a separate network on the same input whose logits are T (paper section 5.6);
            it becomes head ``"aux_model"``, first in ``aux_logits``.
        aux_head: ``pool_size`` / ``width`` / ``hidden`` of the aux heads (GoogLeNet: 4/128/1024).
        example_input: an input to infer shapes from (default ``zeros(1, C_in, 32, 32)``).
        leaf_modules: module names or types fx must not trace into (for untraceable code);
            attention inside them is conditioned in place (:mod:`condattn._inplace`).
        concrete_args: passed to ``torch.fx.Tracer.trace`` to specialise Python control flow.
        mapping: the swap table, source type -> twin (see :mod:`condattn.mappings`); default
            :func:`condattn.get_attention_mapping`.

    Returns:
        A ``torch.fx.GraphModule`` whose forward returns :class:`CondOutput` in train and eval.

    Raises:
        ConversionError: with the valid choices, for a bad ``aux_at``, a head with no attention
            to condition, an untraceable model, an already converted model, or unknown n.
    """
    opts = _validate(  # 1
        model,
        aux_at,
        aux_model=aux_model,
        aux_head=aux_head,
        mapping=mapping,
        num_classes=num_classes,
        conditioned=conditioned,
        cond=cond,
        detach_cond=detach_cond,
        aux_dropout=aux_dropout,
        init=init,
    )
    training = model.training
    model, aux_model = _copy(model, aux_model)  # 2
    example = example_input if example_input is not None else default_example(model)
    opts = replace(opts, example_shape=tuple(example.shape))
    t = trace(model, opts.mapping, leaf_modules, concrete_args, example)  # 3
    n = _num_classes(t, opts.num_classes)
    opts = _resolve_aux_at(t, opts)
    heads = _insert_heads(t, opts, n=n, aux_model=aux_model, example=example)  # 4
    routing = _route(t, heads, feeds, conditioned=conditioned)  # 5
    swaps = _swap(t, heads, routing, n=n, init=init)  # 6
    _rewire_output(t, heads)  # 7
    config = _config(opts, n=n, feeds=routing, aux_model=aux_model, leaf_modules=leaf_modules)
    config = replace(config, routes={a: t.attention[a].route for v in routing.values() for a in v})
    return _finish(t.gm, training=training, config=config, swaps=swaps)  # 8
