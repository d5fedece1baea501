"""``condattn.convert``: rewrite any CNN into its SE-A / SE-R form with torch.fx.

The pass (design.md, layer 2) is one named function per step; :func:`convert` calls them in order:

1. :func:`~condattn.transform.config.options` builds the one validated :class:`ConvertConfig`,
   and :func:`_validate` checks the model (not converted already) and the objects;
2. :func:`_copy` the model, so the caller's model is never mutated;
3. :func:`_trace_modes`: :func:`condattn.transform.tracing.trace` in both modes, with every
   swappable attention type as a leaf, shapes propagated and attention sites collected; then
   :func:`_resolve_aux_at`;
4. :func:`_insert_heads`: an aux head after each ``aux_at`` node (and the auxiliary model);
5. :func:`~condattn.transform.routing.route`: which attention each head conditions;
6. :func:`_swap` each routed attention node for its ``Cond*`` twin and append T to its args;
7. :func:`_rewire_output` to ``CondOutput(logits, aux_logits)``;
8. :func:`_finish`: ``graph.lint()``, join the two graphs, carry the source's public face over,
   and record the conversion config.

Steps 3-7 run twice, on a trace of the model in train mode and one in eval mode (fx freezes
``self.training`` into a graph); the heads and twins are built once and shared, and step 8 joins
the graphs into a :class:`~condattn.transform.modes.DualGraphModule` that follows
``.train()``/``.eval()`` like its source.

Around it (the :mod:`condattn.transform` package): ``tracing`` (step 3, shared with
``discovery``: ``list_stages``, ``list_attention``, ``auto_aux_at``), ``config`` (the one
:class:`ConvertConfig`), ``modes`` (one graph per mode, the source's public face), ``dropin``
(``logits_only``), ``placement`` (``aux_at="auto"``) and ``inplace`` (the in-place route).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from condattn.nn import AuxHead
from condattn.outputs import CondOutput
from condattn.transform.conds import cond_chain, film_builder
from condattn.transform.config import (
    AUX_HEAD_KEYS,
    CONFIG,
    SWAPS,
    ConvertConfig,
    Swap,
    get_config,
    options,
    record,
    recorded,
)
from condattn.transform.fxutils import ConversionError, node_shape, replace_submodule
from condattn.transform.inplace import INPLACE
from condattn.transform.inplace import swap as inplace_swap
from condattn.transform.mappings import cond_types
from condattn.transform.modes import DualGraphModule, finish
from condattn.transform.placement import AUTO, Placement, auto_placement
from condattn.transform.routing import Head, route
from condattn.transform.tracing import (
    INLINE_SE,
    Traced,
    check_mapping,
    default_example,
    like,
    trace_modes,
    unknown,
)

__all__ = [
    "AUX_HEAD_KEYS",
    "ConversionError",
    "ConvertConfig",
    "Placement",
    "convert",
    "get_config",
]

AUX_MODEL = "aux_model"  # the name of the section 5.6 auxiliary model inside a converted model


# --- what the steps pass to each other ---------------------------------------------------------


@dataclass
class _Built:
    """The modules built once and shared by both modes' graphs (steps 4 and 6)."""

    heads: dict[str, tuple[str, nn.Module]]  # aux_at entry -> (submodule name, AuxHead)
    twins: dict[str, nn.Module]  # attention name -> its twin
    projections: dict[str, tuple[str, nn.Module]]  # head -> (name, cond_rank projection)
    swaps: dict[str, Swap]  # attention name -> how its twin was built
    aux_model_checked: bool = False


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


def _validate(
    model: nn.Module, cfg: ConvertConfig, *, aux_model: nn.Module | None, mapping
) -> dict[type[nn.Module], Any]:
    """What the config alone cannot check: the model, the objects and the swap table."""
    if not cfg.aux_at and aux_model is None:
        raise ValueError("give at least one aux_at stage, or an aux_model= (paper section 5.6)")
    if aux_model is not None and not isinstance(aux_model, nn.Module):
        raise TypeError(f"aux_model must be an nn.Module, got {type(aux_model).__name__}")
    mapping = check_mapping(mapping)
    _check_not_converted(model, mapping)
    return mapping


# --- step 2: deep-copy -------------------------------------------------------------------------


def _copy(model: nn.Module, aux_model: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    return copy.deepcopy(model), (copy.deepcopy(aux_model) if aux_model is not None else None)


# --- step 3: trace -----------------------------------------------------------------------------


def _trace_modes(
    model: nn.Module, cfg: ConvertConfig, mapping, concrete_args, example: torch.Tensor
) -> dict[bool, Traced]:
    """The model traced in train mode (True) and in eval mode (False), over the same modules.

    Both must expose the same stages and attention: the heads and twins built for one graph
    are wired into the other.
    """
    traces = trace_modes(model, mapping, cfg.leaf_modules, concrete_args, example)
    t, e = traces[True], traces[False]
    for what, a, b in (("attention", t.attention, e.attention), ("stages", t.outputs, e.outputs)):
        if list(a) != list(b):
            only = sorted(set(a) ^ set(b)) or "their order"
            raise ConversionError(
                f"the model's train-mode and eval-mode forwards differ in their {what} "
                f"({only}); condattn converts both graphs the same way, so they must call the "
                "same stages and attention. Keep the mode-dependent part inside a module named "
                "in leaf_modules=."
            )
    return traces


def _num_classes(t: Traced, given: int | None) -> int:
    """n, the length of T: the logits' width; a ``num_classes=`` that disagrees is an error."""
    traced = int(node_shape(t.logits)[1])
    if given is not None and given != traced:
        raise ConversionError(
            f"num_classes={given}, but the model's logits have {traced} classes (traced shape "
            f"{tuple(node_shape(t.logits))}); pass num_classes={traced} or leave it out"
        )
    return traced


def _resolve_aux_at(t: Traced, cfg: ConvertConfig) -> ConvertConfig:
    """``aux_at="auto"`` becomes the names its rule picks (:mod:`condattn.transform.placement`)."""
    if cfg.aux_at != AUTO:
        _check_stages(t, cfg.aux_at)
        return cfg
    sites = [site.node for site in t.attention.values()]
    chosen = auto_placement(t.gm, t.outputs, sites, conditioned=cfg.conditioned)
    return replace(cfg, aux_at=chosen.aux_at, placement=chosen.reason)


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


def _cond_width(opts: ConvertConfig, n: int) -> int:
    """The width of T as the twins read it: k with ``cond_rank``, else n (or the heads' hidden
    width for ``cond="features"``)."""
    if opts.cond_rank is not None:
        return opts.cond_rank
    return opts.aux_head["hidden"] if opts.cond == "features" else n


def _head_call(graph: fx.Graph, target: str, arg: fx.Node, *, features: bool):
    """The head's call after ``arg``: (its logits node, the node T starts from)."""
    with graph.inserting_after(arg):
        call = graph.call_module(target, (arg,), {"features": True} if features else {})
    if not features:
        return call, call
    with graph.inserting_after(call):
        logits = graph.call_function(operator.getitem, (call, 0))
    with graph.inserting_after(logits):
        hidden = graph.call_function(operator.getitem, (call, 1))
    return logits, hidden


def _projection(t: Traced, opts: ConvertConfig, name: str, width: int, built: _Built) -> str | None:
    """``cond_rank``: the module name of head ``name``'s projection of T (built once)."""
    if opts.cond_rank is None:
        return None
    if name not in built.projections:
        target = f"{built.heads[name][0] if name in built.heads else AUX_MODEL}_proj"
        proj = nn.Linear(width, opts.cond_rank, bias=False)  # P_h: PyTorch's init
        built.projections[name] = (target, proj.to(**t.like))
    target, proj = built.projections[name]
    t.gm.add_submodule(target, proj)
    return target


def _insert_heads(
    t: Traced,
    opts: ConvertConfig,
    *,
    n: int,
    aux_model: nn.Module | None,
    example: torch.Tensor,
    built: _Built,
) -> list[Head]:
    """Add ``aux1``, ``aux2``, ... after the ``aux_at`` nodes (and the aux model after the
    input), and T after each (:func:`condattn.transform.conds.cond_chain`); returns the heads
    in network order. Modules already ``built`` (for the other mode's graph) are reused."""
    gm, graph = t.gm, t.gm.graph
    features = opts.cond == "features"
    outs: list[tuple[str, fx.Node, fx.Node, int]] = []  # name, logits, T's start, T's width
    if aux_model is not None:
        if features:
            raise ConversionError(
                "cond='features' feeds the aux heads' hidden activations; an aux_model has no "
                "such layer. Use cond='logits' (or 'probs', 'shuffled') with aux_model."
            )
        if not built.aux_model_checked:
            _check_aux_model(aux_model, example, n)
            built.aux_model_checked = True
        gm.add_submodule(AUX_MODEL, aux_model)
        logits, start = _head_call(graph, AUX_MODEL, t.input, features=False)
        outs.append((AUX_MODEL, logits, start, n))
    used = {name for name, _ in gm.named_modules()}
    for i, name in enumerate(opts.aux_at, start=1):
        stage = t.outputs[name]
        if name not in built.heads:
            target = f"aux{i}"
            while target in used:
                target = "_" + target
            head = AuxHead(node_shape(stage)[1], n, dropout=opts.aux_dropout, **opts.aux_head)
            built.heads[name] = (target, head.to(**t.like))
        target, head = built.heads[name]
        gm.add_submodule(target, head)
        logits, start = _head_call(graph, target, stage, features=features)
        outs.append((name, logits, start, opts.aux_head["hidden"] if features else n))
    heads = []
    for name, logits, start, width in outs:
        proj = _projection(t, opts, name, width, built)
        cond = cond_chain(graph, start, cond=opts.cond, detach=opts.detach_cond, proj=proj)
        heads.append(Head(name, logits, cond))
    return heads


# --- step 6: swap ------------------------------------------------------------------------------


def _twin(t: Traced, att: str, *, n: int, opts: ConvertConfig, built: _Built) -> nn.Module:
    """The twin of attention ``att`` (on its source's device and dtype), built once: the swap
    table's (``cond_mode="concat"``) or a :class:`~condattn.nn.CondFilm` (``"film"``)."""
    if att not in built.twins:
        site = t.attention[att]
        if site.channels is None:
            raise ConversionError(f"the input of attention {att!r} has no traced channel count")
        src = t.gm.get_submodule(att)  # att is site.node.target on the graph route
        build = site.build
        if opts.cond_mode == "film":
            if site.kind == INLINE_SE:
                raise ConversionError(
                    f"cond_mode='film' needs an attention module with a gate; {att!r} is an SE "
                    "written inline (condattn widens its W1 only). Use cond_mode='concat'."
                )
            build = film_builder(src)
        twin = build(src, channels=site.channels, cond_dim=n, init=opts.init)
        built.twins[att] = twin.to(**(like(src) or t.like))
        skeleton = copy.deepcopy(src).to("meta")
        built.swaps[att] = Swap(skeleton, build, site.channels, n)
    return built.twins[att]


def _swap(
    t: Traced,
    heads: Sequence[Head],
    routing: Mapping[str, Sequence[str]],
    *,
    n: int,
    opts: ConvertConfig,
    built: _Built,
) -> None:
    """Replace each routed attention module by its twin; every call of it gets T appended.
    ``n`` is the width of T as the twins read it."""
    gm = t.gm
    calls: dict[str, list[fx.Node]] = {}
    for x in gm.graph.nodes:
        if x.op == "call_module":
            calls.setdefault(x.target, []).append(x)
    cond = {h.name: h.cond for h in heads}
    inplace: list[tuple[str, fx.Node, nn.Module, fx.Node]] = []
    for h, atts in routing.items():
        for att in atts:
            site = t.attention[att]
            twin = _twin(t, att, n=n, opts=opts, built=built)
            if site.route == INPLACE:  # inside a leaf: T is delivered at run time
                inplace.append((att, site.node, twin, cond[h]))
                continue
            replace_submodule(gm, att, twin)
            for call in calls.get(site.node.target, ()):  # every call of a shared module gets T
                call.args = (*call.args, cond[h])
    inplace_swap(gm, inplace)


# --- step 7: rewire the output -----------------------------------------------------------------


def _rewire_output(t: Traced, heads: Sequence[Head]) -> None:
    graph = t.gm.graph
    out = next(x for x in graph.nodes if x.op == "output")
    with graph.inserting_before(out):
        packed = graph.call_function(CondOutput, (t.logits, tuple(h.out for h in heads)))
    out.args = (packed,)


# --- step 8: lint, join the modes, record ------------------------------------------------------


def _finish(
    traces: Mapping[bool, Traced],
    *,
    source: nn.Module,
    training: bool,
    config: ConvertConfig,
    swaps: dict[str, Swap],
) -> DualGraphModule:
    gm = finish(traces[True].gm, traces[False].gm, source=source, training=training)
    record(gm, CONFIG, config)
    record(gm, SWAPS, swaps)
    return gm


# --- the pass ----------------------------------------------------------------------------------


def convert(
    model: nn.Module,
    config: ConvertConfig | Sequence[str] | str | None = None,
    /,
    *,
    aux_model: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
    concrete_args: dict[str, Any] | None = None,
    mapping: Mapping[type[nn.Module], Any] | None = None,
    **overrides: Any,
) -> DualGraphModule:
    """Insert aux heads into ``model`` and feed their logits T to the attention after them.

    The options are the fields of :class:`ConvertConfig` (its docstring says each one's default
    and why): ``aux_at``, ``num_classes``, ``feeds``, ``conditioned``, ``cond``, ``detach_cond``,
    ``aux_dropout``, ``init``, ``aux_head`` and ``leaf_modules``. Give them as keywords, as a
    ``ConvertConfig`` (keywords override its fields), or give ``aux_at`` as the second argument::

        convert(model, aux_at=["layer2", "layer3"], init="default")
        convert(model, ["layer2", "layer3"], conditioned=False)      # SE-A
        convert(model, get_config(converted))                        # the same conversion again

    Args:
        model: any CNN that returns logits; it is not modified. Its mode does not matter: the
            result follows ``.train()``/``.eval()`` as ``model`` does.
        config: a :class:`ConvertConfig`, or the ``aux_at`` value; None: the defaults.
        aux_model: a separate network on the same input whose logits are T (paper section 5.6);
            it becomes head ``"aux_model"``, first in ``aux_logits``.
        example_input: an input to infer shapes from (default ``zeros(1, C_in, 32, 32)``).
        concrete_args: passed to ``torch.fx.Tracer.trace`` to specialise Python control flow.
        mapping: the swap table, source type -> twin (see :mod:`condattn.transform.mappings`);
            default :func:`condattn.get_attention_mapping`.
        **overrides: options by name (the fields of :class:`ConvertConfig`).

    Returns:
        A :class:`~condattn.transform.modes.DualGraphModule` (a ``torch.fx.GraphModule``) whose
        forward returns :class:`CondOutput` in train and eval, with one graph per mode.

    Raises:
        ConversionError: with the valid choices, for a bad ``aux_at``, a head with no attention
            to condition, an untraceable model, an already converted model, or unknown n.
        TypeError: an unknown option, named with the valid ones.
    """
    cfg = options(config, overrides)  # 1
    mapping = _validate(model, cfg, aux_model=aux_model, mapping=mapping)
    training = model.training
    model, aux_model = _copy(model, aux_model)  # 2
    example = example_input if example_input is not None else default_example(model)
    traces = _trace_modes(model, cfg, mapping, concrete_args, example)  # 3
    n = _num_classes(traces[True], cfg.num_classes)
    cfg = _resolve_aux_at(traces[True], cfg)
    built = _Built(heads={}, twins={}, projections={}, swaps={})
    routings = {}
    for mode, t in traces.items():
        heads = _insert_heads(t, cfg, n=n, aux_model=aux_model, example=example, built=built)  # 4
        routings[mode] = route(t, heads, cfg.feeds, conditioned=cfg.conditioned)  # 5
        _swap(t, heads, routings[mode], n=_cond_width(cfg, n), opts=cfg, built=built)  # 6
        _rewire_output(t, heads)  # 7
    routing = routings[True]
    assert routing == routings[False], (routing, routings[False])  # same sites in both modes
    attention = traces[True].attention
    cfg = replace(
        cfg,
        num_classes=n,
        feeds=routing,
        aux_model=aux_model is not None,
        example_shape=tuple(example.shape),
        routes={a: attention[a].route for v in routing.values() for a in v},
    )
    return _finish(traces, source=model, training=training, config=cfg, swaps=built.swaps)  # 8
