"""``condattn.convert``: rewrite any CNN into its SE-A / SE-R form with torch.fx.

The pass (design.md, layer 2) is one named function per step; :func:`convert` calls them in order:

1. :func:`_validate` the arguments, and refuse a model that is already converted;
2. :func:`_copy` the model, so the caller's model is never mutated;
3. :func:`_trace` with every swappable attention type as a leaf, propagate shapes, and collect
   the attention sites;
4. :func:`_insert_heads`: an aux head after each ``aux_at`` node (and the auxiliary model);
5. :func:`_route`: which attention each head conditions;
6. :func:`_swap` each routed attention node for its ``Cond*`` twin and append T to its args;
7. :func:`_rewire_output` to ``CondOutput(logits, aux_logits)``;
8. :func:`_finish`: ``graph.lint()``, ``recompile()``, and the conversion config.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import fx, nn

from condattn import _fx, _inplace
from condattn._fx import ConversionError
from condattn._placement import AUTO, Placement, auto_placement
from condattn.mappings import Builder, as_builder, cond_types, get_attention_mapping
from condattn.nn import AuxHead, CondLinear
from condattn.nn._common import INITS
from condattn.outputs import CondOutput

__all__ = [
    "ConversionError",
    "ConvertConfig",
    "Placement",
    "auto_aux_at",
    "convert",
    "get_config",
    "list_attention",
    "list_stages",
    "logits_only",
]

CONDS = ("logits", "probs")
AUX_MODEL = "aux_model"  # the name of the section 5.6 auxiliary model inside a converted model
AUX_HEAD_KEYS = ("pool_size", "width", "hidden")
INLINE_SE = "inline SE"  # the kind of an SE written inline (its W1 is swapped for a CondLinear)


@dataclass(frozen=True)
class ConvertConfig:
    """Everything needed to rebuild a conversion from its base model (saved as JSON)."""

    aux_at: tuple[str, ...]
    num_classes: int
    feeds: dict[str, tuple[str, ...]]  # head name -> attention names it conditions
    conditioned: bool = True
    cond: str = "logits"
    detach_cond: bool = False
    aux_dropout: float = 0.7
    init: str = "zeros"
    aux_model: bool = False
    aux_head: dict[str, int] = field(default_factory=dict)  # pool_size / width / hidden
    leaf_modules: tuple[str, ...] = ()
    example_shape: tuple[int, ...] = ()
    # how aux_at was chosen: "given" by the caller, or the reason of aux_at="auto"'s rule
    placement: str = "given"
    # conditioned attention name -> its route: "graph" (T is an argument of its call in the
    # graph) or "in-place" (inside a leaf module; T delivered at run time, condattn._inplace)
    routes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConvertConfig:
        d = json.loads(text)
        d["aux_at"] = tuple(d["aux_at"])
        d["feeds"] = {k: tuple(v) for k, v in d["feeds"].items()}
        d["leaf_modules"] = tuple(d["leaf_modules"])
        d["example_shape"] = tuple(d["example_shape"])
        return cls(**d)


_CONFIG = "condattn_config"  # gm.meta key of the ConvertConfig
_SWAPS = "condattn_swaps"  # gm.meta key of the _Swaps (how each twin was built)


def _record(gm: fx.GraphModule, key: str, value: Any) -> None:
    """Keep ``value`` in ``gm.meta[key]`` and, because fx does not pickle ``meta`` (it rebuilds
    the GraphModule from its code), also as a plain attribute that ``torch.load`` restores."""
    gm.meta[key] = value
    gm.__dict__["_" + key] = value


def _recorded(model: nn.Module, key: str) -> Any:
    if not isinstance(model, fx.GraphModule):
        return None
    value = model.meta.get(key)
    if value is None:
        value = model.__dict__.get("_" + key)
        if value is not None:  # unpickled by torch.load: put it back where it belongs
            model.meta[key] = value
    return value


def get_config(model: nn.Module) -> ConvertConfig:
    """The :class:`ConvertConfig` of a converted model."""
    cfg = _recorded(model, _CONFIG)
    if cfg is None:
        raise ValueError("this model was not made by condattn.convert")
    return cfg


@dataclass(frozen=True)
class _Swap:
    """How one twin was built, so that its source's weights can be mapped onto it later
    (:func:`condattn.load_base_state_dict`)."""

    source: nn.Module  # a copy of the source module on the meta device (no memory)
    build: Builder
    channels: int
    cond_dim: int


def swaps_of(model: nn.Module) -> dict[str, _Swap]:
    """Module path -> :class:`_Swap` of every twin that :func:`convert` put in ``model``."""
    get_config(model)
    return dict(_recorded(model, _SWAPS) or {})


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


@dataclass
class _Attention:
    """One swappable attention site. Every site is collected here, in one place (step 3), so
    that a second route (attention inside a leaf) can be added beside the graph route."""

    node: fx.Node  # the call that receives T: a module call, or an inline SE's W1
    kind: str  # the source type's name, or INLINE_SE
    build: Builder  # build(src, *, channels=C, cond_dim=n, init=...) -> twin
    channels: int | None  # C, the channels of the node's input as traced
    route: str = _inplace.GRAPH  # or INPLACE: inside a leaf module (condattn._inplace)


@dataclass
class _Traced:
    gm: fx.GraphModule
    outputs: dict[str, fx.Node]  # module name -> output node (4-D outputs only)
    attention: dict[str, _Attention]  # attention name -> site, in network order
    input: fx.Node
    logits: fx.Node
    like: dict[str, Any]  # device and dtype of the model's parameters: new modules follow them

    def order(self) -> dict[fx.Node, int]:
        return {n: i for i, n in enumerate(self.gm.graph.nodes)}


@dataclass(frozen=True)
class _Head:
    name: str  # an aux_at entry, or AUX_MODEL
    out: fx.Node  # the head's logits (returned in aux_logits)
    cond: fx.Node  # T as fed to the attention (after the optional softmax / detach)


# --- step 1: validate --------------------------------------------------------------------------


def _check_not_converted(model: nn.Module, mapping: Mapping[type[nn.Module], Any]) -> None:
    if _recorded(model, _CONFIG) is not None:
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


def _check_mapping(mapping: Mapping[type[nn.Module], Any] | None) -> dict[type[nn.Module], Any]:
    if mapping is None:
        return get_attention_mapping()
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a dict of type -> twin, got {type(mapping).__name__}")
    for src_type, value in mapping.items():
        if not (isinstance(src_type, type) and issubclass(src_type, nn.Module)):
            raise TypeError(f"mapping keys must be nn.Module subclasses, got {src_type!r}")
        as_builder(value)
    return dict(mapping)


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
    mapping = _check_mapping(mapping)
    _check_not_converted(model, mapping)
    return _Options(aux_at=aux_at, aux_head=head_kw, mapping=mapping, **opts)


# --- step 2: deep-copy -------------------------------------------------------------------------


def _copy(model: nn.Module, aux_model: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    return copy.deepcopy(model), (copy.deepcopy(aux_model) if aux_model is not None else None)


# --- step 3: trace -----------------------------------------------------------------------------


def _default_example(model: nn.Module) -> torch.Tensor:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    p = next(iter(model.parameters()), None)
    cin = first_conv.in_channels if first_conv is not None else 3
    kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    return torch.zeros(1, cin, 32, 32, **kw)


def _like(module: nn.Module) -> dict[str, Any]:
    """``device`` and ``dtype`` of a module's first floating-point parameter (or nothing)."""
    p = next((p for p in module.parameters() if p.is_floating_point()), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {}


def _in_channels(node: fx.Node) -> int | None:
    arg = node.args[0] if node.args else None
    shape = _fx.node_shape(arg) if isinstance(arg, fx.Node) else None
    return int(shape[1]) if shape is not None and len(shape) > 1 else None


def _collect_attention(
    gm: fx.GraphModule,
    mapping: Mapping[type[nn.Module], Any],
    inner: Sequence[_inplace.InnerSite] = (),
) -> dict[str, _Attention]:
    """Every swappable attention site: module calls of a mapped type, inline SEs' W1, and the
    ``inner`` attention found inside leaf modules (the in-place route, :mod:`condattn._inplace`),
    which sits at its leaf's position in the network order."""
    found: dict[fx.Node, tuple[str, _Attention]] = {}
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in seen:
            src_type = type(gm.get_submodule(node.target))
            if src_type in mapping:
                seen.add(node.target)
                site = _Attention(node, src_type.__name__, as_builder(mapping[src_type]), None)
                found[node] = (node.target, site)
    for se in _fx.find_inline_se(gm):
        found[se.w1] = (se.w1.target, _Attention(se.w1, INLINE_SE, CondLinear.from_module, None))
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    sites = dict(v for _, v in sorted(found.items(), key=lambda kv: order[kv[0]]))
    for site in sites.values():
        site.channels = _in_channels(site.node)
    for s in inner:
        sites[s.name] = _Attention(s.node, s.kind, s.build, s.channels, route=_inplace.INPLACE)
    return dict(sorted(sites.items(), key=lambda kv: order[kv[1].node]))  # stable: inner in order


def _logits_node(gm: fx.GraphModule) -> fx.Node:
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    logits = out_node.args[0]
    shape = _fx.node_shape(logits) if isinstance(logits, fx.Node) else None
    if shape is None or len(shape) != 2:
        raise ConversionError(
            "the model must return one (batch, num_classes) tensor of logits; it returns "
            f"{logits!r}. Wrap it so that forward returns the logits only."
        )
    return logits


def _trace(
    model: nn.Module,
    mapping: Mapping[type[nn.Module], Any],
    leaf_modules: Sequence[str | type[nn.Module]],
    concrete_args: dict[str, Any] | None,
    example: torch.Tensor,
) -> _Traced:
    res = _fx.trace(
        model, leaf_types=tuple(mapping), leaf_modules=leaf_modules, concrete_args=concrete_args
    )
    gm = fx.GraphModule(model, res.graph, class_name=type(model).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise ConversionError("the traced model has no input")
    inner = _inplace.InnerAttention(gm, mapping)  # attention inside leaves: found as it runs
    try:
        with inner.recording():
            _fx.propagate_shapes(gm, example)
    except Exception as e:
        raise ConversionError(
            f"running the traced model on an example input of shape {tuple(example.shape)} "
            f"failed ({type(e).__name__}: {e}); pass example_input= with a valid input"
        ) from e
    logits = _logits_node(gm)
    outputs = {
        name: node
        for name, node in res.module_outputs.items()
        if name and (s := _fx.node_shape(node)) is not None and len(s) == 4
    }
    attention = _collect_attention(gm, mapping, inner.sites())
    return _Traced(gm, outputs, attention, placeholders[0], logits, _like(model))


def _unknown(kind: str, name: str, valid: Sequence[str], hint: str) -> ConversionError:
    close = difflib.get_close_matches(name, valid, n=3)
    shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
    did = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ConversionError(f"unknown {kind} {name!r}.{did} Valid choices: {shown}. {hint}")


def _num_classes(t: _Traced, given: int | None) -> int:
    """n, the length of T: the logits' width; a ``num_classes=`` that disagrees is an error."""
    traced = int(_fx.node_shape(t.logits)[1])
    if given is not None and given != traced:
        raise ConversionError(
            f"num_classes={given}, but the model's logits have {traced} classes (traced shape "
            f"{tuple(_fx.node_shape(t.logits))}); pass num_classes={traced} or leave it out"
        )
    return traced


def _resolve_aux_at(t: _Traced, opts: _Options) -> _Options:
    """``aux_at="auto"`` becomes the names its rule picks (:mod:`condattn._placement`)."""
    if opts.aux_at != AUTO:
        _check_stages(t, opts.aux_at)
        return opts
    sites = [site.node for site in t.attention.values()]
    chosen = auto_placement(t.gm, t.outputs, sites, conditioned=opts.conditioned)
    return replace(opts, aux_at=chosen.aux_at, placement=chosen.reason)


def _check_stages(t: _Traced, aux_at: Sequence[str]) -> None:
    """Every ``aux_at`` entry is a module with a 4-D output, and they are in network order."""
    order = t.order()
    for name in aux_at:
        if name not in t.outputs:
            raise _unknown(
                "aux_at stage", name, list(t.outputs), "See condattn.list_stages(model)."
            )
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
    t: _Traced, opts: _Options, *, n: int, aux_model: nn.Module | None, example: torch.Tensor
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
        head = AuxHead(_fx.node_shape(stage)[1], n, dropout=opts.aux_dropout, **opts.aux_head)
        gm.add_submodule(target, head.to(**t.like))
        with graph.inserting_after(stage):
            outs.append((name, graph.call_module(target, (stage,))))
    return [_Head(name, out, _cond_of(graph, out, opts)) for name, out in outs]


# --- step 5: route -----------------------------------------------------------------------------


def _default_routing(t: _Traced, heads: Sequence[_Head]) -> dict[str, tuple[str, ...]]:
    """The paper's routing: each attention module is fed by the nearest head before it."""
    order = t.order()
    routing: dict[str, list[str]] = {h.name: [] for h in heads}
    for att, site in t.attention.items():
        before = [h.name for h in heads if order[h.out] < order[site.node]]
        if before:
            routing[before[-1]].append(att)
    return {h: tuple(v) for h, v in routing.items()}


def _user_routing(
    t: _Traced, heads: Sequence[_Head], feeds: Mapping[str, Sequence[str]]
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
                raise _unknown(
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
    t: _Traced,
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
            with_att = [s for s, v in _stages_with_attention(t).items() if v]
            raise ConversionError(
                f"aux head at {h!r} has no attention module after it to condition. Stages "
                f"followed by attention: {with_att or 'none'}. Use conditioned=False for "
                "heads only (SE-A), or register your attention type with "
                "condattn.register_attention."
            )
    return routing


# --- step 6: swap ------------------------------------------------------------------------------


def _swap(
    t: _Traced, heads: Sequence[_Head], routing: Mapping[str, Sequence[str]], *, n: int, init: str
) -> dict[str, _Swap]:
    """Replace each routed attention module by its twin (on its source's device and dtype);
    every call of it gets T appended. Returns how each twin was built."""
    gm = t.gm
    swaps: dict[str, _Swap] = {}
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
            twin = twin.to(**(_like(src) or t.like))
            skeleton = copy.deepcopy(src).to("meta")
            swaps[att] = _Swap(skeleton, site.build, site.channels, n)
            if site.route == _inplace.INPLACE:  # inside a leaf: T is delivered at run time
                inplace.append((att, site.node, twin, cond[h]))
                continue
            _fx.replace_submodule(gm, att, twin)
            for call in calls.get(site.node.target, ()):  # every call of a shared module gets T
                call.args = (*call.args, cond[h])
    _inplace.swap(gm, inplace)
    return swaps


# --- step 7: rewire the output -----------------------------------------------------------------


def _rewire_output(t: _Traced, heads: Sequence[_Head]) -> None:
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
    gm: fx.GraphModule, *, training: bool, config: ConvertConfig, swaps: dict[str, _Swap]
) -> fx.GraphModule:
    gm.graph.lint()
    gm.recompile()
    gm.train(training)
    _record(gm, _CONFIG, config)
    _record(gm, _SWAPS, swaps)
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
    example = example_input if example_input is not None else _default_example(model)
    opts = replace(opts, example_shape=tuple(example.shape))
    t = _trace(model, opts.mapping, leaf_modules, concrete_args, example)  # 3
    n = _num_classes(t, opts.num_classes)
    opts = _resolve_aux_at(t, opts)
    heads = _insert_heads(t, opts, n=n, aux_model=aux_model, example=example)  # 4
    routing = _route(t, heads, feeds, conditioned=conditioned)  # 5
    swaps = _swap(t, heads, routing, n=n, init=init)  # 6
    _rewire_output(t, heads)  # 7
    config = _config(opts, n=n, feeds=routing, aux_model=aux_model, leaf_modules=leaf_modules)
    config = replace(config, routes={a: t.attention[a].route for v in routing.values() for a in v})
    return _finish(t.gm, training=training, config=config, swaps=swaps)  # 8


# --- drop-in use ------------------------------------------------------------------------------


def _head_part(out: fx.Node) -> set[fx.Node]:
    """The aux-logits nodes of a converted graph and the softmax / detach chain after each."""
    part, todo = set(), list(out.args[0].args[1])
    while todo:
        node = todo.pop()
        part.add(node)
        todo += [u for u in node.users if u.target in (torch.softmax, "detach")]
    return part


def logits_only(model: fx.GraphModule) -> fx.GraphModule:
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
    graph = copy.deepcopy(model.graph)
    out = next(n for n in graph.nodes if n.op == "output")
    packed = out.args[0]
    assert packed.op == "call_function" and packed.target is CondOutput, packed.format_node()
    heads = _head_part(out)
    out.args = (packed.args[0],)
    graph.erase_node(packed)
    graph.eliminate_dead_code(is_impure_node=lambda node: node not in heads)
    graph.lint()
    gm = fx.GraphModule(model, graph, class_name=f"{type(model).__name__}LogitsOnly")
    gm.train(model.training)
    _record(gm, _CONFIG, config)
    _record(gm, _SWAPS, swaps_of(model))
    return gm


# --- discovery ---------------------------------------------------------------------------------


def _stages_with_attention(t: _Traced) -> dict[str, list[str]]:
    order = t.order()
    return {
        name: [a for a, site in t.attention.items() if order[site.node] > order[node]]
        for name, node in t.outputs.items()
    }


def _trace_for_listing(model, leaf_modules, concrete_args, example_input, mapping) -> _Traced:
    mapping = _check_mapping(mapping)
    model = copy.deepcopy(model)
    example = example_input if example_input is not None else _default_example(model)
    return _trace(model, mapping, leaf_modules, concrete_args, example)


def list_stages(
    model: nn.Module,
    *,
    example_input: torch.Tensor | None = None,
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
    mapping: Mapping[type[nn.Module], Any] | None = None,
) -> dict[str, list[str]]:
    """Valid ``aux_at`` names (modules with a 4-D output, in network order) -> the attention
    modules after each, i.e. what a single head there would condition.

    ``aux_at="auto"``'s choice among them, and its reason: :func:`auto_aux_at`.
    """
    return _stages_with_attention(
        _trace_for_listing(model, leaf_modules, concrete_args, example_input, mapping)
    )


def auto_aux_at(
    model: nn.Module,
    *,
    conditioned: bool = True,
    example_input: torch.Tensor | None = None,
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
    mapping: Mapping[type[nn.Module], Any] | None = None,
) -> Placement:
    """What ``convert(model, aux_at="auto")`` would choose, and why, without converting.

    The rule is in :mod:`condattn._placement` (and docs/howto-convert.md): heads at the ends of
    the two stages before the last downsampling stage (``layer2``/``layer3`` of a ResNet), moved
    or merged so that each head conditions some attention.

    Returns:
        A :class:`Placement`: ``aux_at`` (the names), ``reason`` and every ``stages`` found.
    """
    t = _trace_for_listing(model, leaf_modules, concrete_args, example_input, mapping)
    sites = [site.node for site in t.attention.values()]
    return auto_placement(t.gm, t.outputs, sites, conditioned=conditioned)


def list_attention(
    model: nn.Module,
    aux_at: Sequence[str] | None = None,
    *,
    example_input: torch.Tensor | None = None,
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
    mapping: Mapping[type[nn.Module], Any] | None = None,
) -> dict[str, dict[str, str | None]]:
    """Swappable attention in network order: name -> ``{"kind": ..., "fed_by": head or None,
    "route": "graph" or "in-place"}``. The route is ``"in-place"`` for attention inside a module
    that fx keeps whole (a leaf: ``leaf_modules``, timm's not-traceable blocks), which
    :mod:`condattn._inplace` conditions without a node of its own in the graph.

    ``fed_by`` is the ``aux_at`` entry (``"auto"`` resolves as in :func:`convert`) that would
    condition it under the default routing.
    """
    t = _trace_for_listing(model, leaf_modules, concrete_args, example_input, mapping)
    order = t.order()
    if aux_at == AUTO:
        aux_at = auto_placement(t.gm, t.outputs, [s.node for s in t.attention.values()]).aux_at
    aux_at = [aux_at] if isinstance(aux_at, str) else list(aux_at or [])
    for a in aux_at:
        if a not in t.outputs:
            raise _unknown("aux_at stage", a, list(t.outputs), "See condattn.list_stages(model).")
    result = {}
    for name, site in t.attention.items():
        before = [a for a in aux_at if order[t.outputs[a]] < order[site.node]]
        fed_by = before[-1] if before else None
        result[name] = {"kind": site.kind, "fed_by": fed_by, "route": site.route}
    return result
