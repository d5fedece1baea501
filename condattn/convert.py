"""``condattn.convert``: rewrite any CNN into its SE-A / SE-R form with torch.fx.

The pass (design.md, layer 2), in numbered steps:

1. validate the arguments;
2. deep-copy, so the caller's model is never mutated;
3. trace with every swappable attention type as a leaf, and propagate shapes;
4. insert an aux head after each ``aux_at`` node (and the auxiliary model, if any);
5. swap each attention node fed by a head for its ``Cond*`` twin and append T to its args;
6. rewire the output to ``CondOutput(logits, aux_logits)``;
7. ``graph.lint()`` and ``recompile()``.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from condattn import _fx
from condattn._fx import ConversionError
from condattn.mappings import COND_TYPES, get_attention_mapping
from condattn.nn import AuxHead, CondLinear
from condattn.nn._common import INITS
from condattn.outputs import CondOutput

__all__ = [
    "ConversionError",
    "ConvertConfig",
    "convert",
    "get_config",
    "list_attention",
    "list_stages",
    "load",
    "save",
]

CONDS = ("logits", "probs")
AUX_MODEL = "aux_model"  # the name of the section 5.6 auxiliary model inside a converted model
_FORMAT = "condattn.checkpoint.v1"


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


def get_config(model: nn.Module) -> ConvertConfig:
    """The :class:`ConvertConfig` of a converted model."""
    cfg = (
        getattr(model, "meta", {}).get("condattn_config")
        if isinstance(model, fx.GraphModule)
        else None
    )
    if cfg is None:
        raise ValueError("this model was not made by condattn.convert")
    return cfg


# --- step 1 ---------------------------------------------------------------------------------


def _check_not_converted(model: nn.Module) -> None:
    if isinstance(model, fx.GraphModule) and "condattn_config" in getattr(model, "meta", {}):
        raise ConversionError(
            "this model is already converted (it has a condattn config); convert the original "
            "model instead, or load a saved conversion with condattn.load(path, base_model)"
        )
    for name, m in model.named_modules():
        if isinstance(m, (*COND_TYPES, AuxHead)):
            raise ConversionError(
                f"this model already contains a condattn {type(m).__name__} at {name!r}: it looks "
                "converted. Convert the original model instead."
            )


def _validate(aux_at, *, cond, init, aux_dropout, num_classes, aux_model) -> tuple[str, ...]:
    if isinstance(aux_at, str):
        aux_at = (aux_at,)
    aux_at = tuple(aux_at)
    if not all(isinstance(a, str) for a in aux_at):
        raise TypeError(f"aux_at must be a list of module names, got {aux_at!r}")
    if len(set(aux_at)) != len(aux_at):
        raise ValueError(f"aux_at has duplicates: {aux_at}")
    if not aux_at and aux_model is None:
        raise ValueError("give at least one aux_at stage, or an aux_model= (paper section 5.6)")
    if cond not in CONDS:
        raise ValueError(f"cond must be one of {CONDS}, got {cond!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not 0.0 <= aux_dropout < 1.0:
        raise ValueError(f"aux_dropout must be in [0, 1), got {aux_dropout}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes <= 0):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if aux_model is not None and not isinstance(aux_model, nn.Module):
        raise TypeError(f"aux_model must be an nn.Module, got {type(aux_model).__name__}")
    return aux_at


# --- step 3 helpers -------------------------------------------------------------------------


@dataclass
class _Traced:
    gm: fx.GraphModule
    outputs: dict[str, fx.Node]  # module name -> output node (4-D outputs only)
    attention: dict[str, fx.Node]  # attention name -> node (module call, or inline SE's W1)
    kinds: dict[str, str]
    input: fx.Node
    logits: fx.Node


def _default_example(model: nn.Module) -> torch.Tensor:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    p = next(iter(model.parameters()), None)
    cin = first_conv.in_channels if first_conv is not None else 3
    kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
    return torch.zeros(1, cin, 32, 32, **kw)


def _trace(model, *, leaf_modules, concrete_args, example) -> _Traced:
    mapping = get_attention_mapping()
    res = _fx.trace(
        model, leaf_types=tuple(mapping), leaf_modules=leaf_modules, concrete_args=concrete_args
    )
    gm = fx.GraphModule(model, res.graph, class_name=type(model).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise ConversionError("the traced model has no input")
    try:
        _fx.propagate_shapes(gm, example)
    except Exception as e:
        raise ConversionError(
            f"running the traced model on an example input of shape {tuple(example.shape)} "
            f"failed ({type(e).__name__}: {e}); pass example_input= with a valid input"
        ) from e
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    logits = out_node.args[0]
    if (
        not isinstance(logits, fx.Node)
        or _fx.node_shape(logits) is None
        or len(_fx.node_shape(logits)) != 2
    ):
        raise ConversionError(
            "the model must return one (batch, num_classes) tensor of logits; it returns "
            f"{logits!r}. Wrap it so that forward returns the logits only."
        )
    outputs = {
        name: node
        for name, node in res.module_outputs.items()
        if name and (s := _fx.node_shape(node)) is not None and len(s) == 4
    }
    attention: dict[str, fx.Node] = {}
    kinds: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(gm.get_submodule(node.target)) in mapping:
            attention.setdefault(node.target, node)
            kinds[node.target] = type(gm.get_submodule(node.target)).__name__
    for se in _fx.find_inline_se(gm):
        attention[se.w1.target] = se.w1
        kinds[se.w1.target] = "inline SE"
    return _Traced(gm, outputs, attention, kinds, placeholders[0], logits)


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


def _order(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(gm.graph.nodes)}


def _unknown(kind: str, name: str, valid: Sequence[str], hint: str) -> ConversionError:
    close = difflib.get_close_matches(name, valid, n=3)
    shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
    did = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ConversionError(f"unknown {kind} {name!r}.{did} Valid choices: {shown}. {hint}")


def _route(
    t: _Traced, heads: list[tuple[str, fx.Node]], feeds: Mapping[str, Sequence[str]] | None
) -> dict[str, tuple[str, ...]]:
    """Which attention each head conditions: by default the attention after it, up to the next."""
    order = _order(t.gm)
    names = [h for h, _ in heads]
    if feeds is None:
        routing: dict[str, list[str]] = {h: [] for h in names}
        for att, node in t.attention.items():
            before = [h for h, hn in heads if order[hn] < order[node]]
            if before:
                routing[before[-1]].append(att)
        return {h: tuple(v) for h, v in routing.items()}
    unknown_heads = set(feeds) - set(names)
    if unknown_heads:
        raise ConversionError(
            f"feeds names heads {sorted(unknown_heads)} that are not in aux_at/aux_model: {names}"
        )
    routing = {h: [] for h in names}
    taken: dict[str, str] = {}
    head_node = dict(heads)
    for h, atts in feeds.items():
        for a in [atts] if isinstance(atts, str) else atts:
            matched = [n for n in t.attention if n == a or n.startswith(a + ".")]
            if not matched:
                raise _unknown(
                    "attention module", a, list(t.attention), "See condattn.list_attention(model)."
                )
            for m in matched:
                if order[t.attention[m]] <= order[head_node[h]]:
                    raise ConversionError(
                        f"head {h!r} cannot feed {m!r}: that attention runs before the head's "
                        "output exists. Feed only attention that comes after the head."
                    )
                if m in taken and taken[m] != h:
                    raise ConversionError(f"{m!r} is fed by two heads: {taken[m]!r} and {h!r}")
                taken[m] = h
                routing[h].append(m)
    return {h: tuple(v) for h, v in routing.items()}


# --- the pass -------------------------------------------------------------------------------


def convert(
    model: nn.Module,
    aux_at: Sequence[str] = ("layer2", "layer3"),
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
) -> fx.GraphModule:
    """Insert aux heads into ``model`` and feed their logits T to the attention after them.

    Args:
        model: any CNN that returns logits; it is not modified.
        aux_at: qualified module names (as in ``named_modules()``) after whose output an aux head
            goes, in network order; see :func:`list_stages`.
        num_classes: n; inferred from the logits when None.
        feeds: head name (an ``aux_at`` entry, or ``"aux_model"``) -> attention names (or name
            prefixes such as ``"layer3"``) it conditions. Default: the paper's routing, each
            attention module is fed by the nearest head before it.
        conditioned: False gives SE-A: heads and their outputs, attention untouched.
        cond: ``"logits"`` (the paper's T) or ``"probs"`` (softmax of the logits).
        detach_cond: stop the attention's gradient from flowing back into the heads through T.
        aux_dropout: dropout of the aux heads (paper 0.7; Table 5).
        init: T-column init of the twins: ``"zeros"`` keeps the original function exactly (safe
            for trained models); ``"default"`` is PyTorch's init, as when training from scratch.
        aux_model: a separate network on the same input whose logits are T (paper section 5.6);
            it becomes head ``"aux_model"``, first in ``aux_logits``.
        aux_head: ``pool_size`` / ``width`` / ``hidden`` of the aux heads (GoogLeNet: 4/128/1024).
        example_input: an input to infer shapes from (default ``zeros(1, C_in, 32, 32)``).
        leaf_modules: module names or types fx must not trace into (for untraceable code).
        concrete_args: passed to ``torch.fx.Tracer.trace`` to specialise Python control flow.

    Returns:
        A ``torch.fx.GraphModule`` whose forward returns :class:`CondOutput` in train and eval.

    Raises:
        ConversionError: with the valid choices, for a bad ``aux_at``, a head with no attention
            to condition, an untraceable model, an already converted model, or unknown n.
    """
    # 1. validate
    aux_at = _validate(
        aux_at,
        cond=cond,
        init=init,
        aux_dropout=aux_dropout,
        num_classes=num_classes,
        aux_model=aux_model,
    )
    _check_not_converted(model)
    head_kw = {"pool_size": 4, "width": 128, "hidden": 1024, **(aux_head or {})}
    if set(head_kw) - {"pool_size", "width", "hidden"}:
        raise ValueError(f"aux_head takes pool_size, width, hidden; got {sorted(aux_head)}")

    # 2. deep-copy
    was_training = model.training
    model = copy.deepcopy(model)
    aux_model = copy.deepcopy(aux_model) if aux_model is not None else None
    example = example_input if example_input is not None else _default_example(model)

    # 3. trace
    t = _trace(model, leaf_modules=leaf_modules, concrete_args=concrete_args, example=example)
    gm, graph = t.gm, t.gm.graph
    n = num_classes or int(_fx.node_shape(t.logits)[1])
    order = _order(gm)
    for name in aux_at:
        if name not in t.outputs:
            raise _unknown(
                "aux_at stage", name, list(t.outputs), "See condattn.list_stages(model)."
            )
    positions = [order[t.outputs[a]] for a in aux_at]
    if positions != sorted(positions):
        ordered = sorted(aux_at, key=lambda a: order[t.outputs[a]])
        raise ConversionError(f"aux_at must be listed in network order: {ordered}")

    # 4. insert the heads (and the auxiliary model)
    heads: list[tuple[str, fx.Node]] = []  # (head name, T node)
    head_outputs: list[fx.Node] = []
    used = {name for name, _ in gm.named_modules()}
    if aux_model is not None:
        _check_aux_model(aux_model, example, n)
        gm.add_submodule(AUX_MODEL, aux_model)
        with graph.inserting_after(t.input):
            head_outputs.append(graph.call_module(AUX_MODEL, (t.input,)))
        heads.append((AUX_MODEL, head_outputs[-1]))
    for i, name in enumerate(aux_at, start=1):
        stage = t.outputs[name]
        target = f"aux{i}"
        while target in used:
            target = "_" + target
        gm.add_submodule(
            target, AuxHead(_fx.node_shape(stage)[1], n, dropout=aux_dropout, **head_kw)
        )
        with graph.inserting_after(stage):
            head_outputs.append(graph.call_module(target, (stage,)))
        heads.append((name, head_outputs[-1]))
    cond_nodes: dict[str, fx.Node] = {}
    for name, node in heads:
        tnode = node
        with graph.inserting_after(tnode):
            if cond == "probs":
                tnode = graph.call_function(torch.softmax, (tnode,), {"dim": 1})
        with graph.inserting_after(tnode):
            if detach_cond:
                tnode = graph.call_method("detach", (tnode,))
        cond_nodes[name] = tnode

    routing = _route(t, heads, feeds) if conditioned else {h: () for h, _ in heads}
    if conditioned and feeds is None:
        for h, atts in routing.items():
            if not atts:
                with_att = [s for s, v in _stages_with_attention(t).items() if v]
                raise ConversionError(
                    f"aux head at {h!r} has no attention module after it to condition. Stages "
                    f"followed by attention: {with_att or 'none'}. Use conditioned=False for "
                    "heads only (SE-A), or register your attention type with "
                    "condattn.register_attention."
                )

    # 5. swap the fed attention for its twins
    mapping = get_attention_mapping()
    calls: dict[str, list[fx.Node]] = {}
    for x in graph.nodes:
        if x.op == "call_module":
            calls.setdefault(x.target, []).append(x)
    for h, atts in routing.items():
        for att in atts:
            node = t.attention[att]
            src = gm.get_submodule(node.target)
            if t.kinds[att] == "inline SE":
                twin = CondLinear.from_module(src, cond_dim=n, init=init)
            else:
                c = _fx.node_shape(node.args[0])
                if c is not None and len(c) > 1 and not hasattr(src, "channels"):
                    src._condattn_channels = int(c[1])
                twin = mapping[type(src)](src, cond_dim=n, init=init)
            _fx.replace_submodule(gm, node.target, twin)
            for call in calls.get(node.target, ()):  # every call of a shared module gets T
                call.args = (*call.args, cond_nodes[h])

    # 6. rewire the output
    out = next(x for x in graph.nodes if x.op == "output")
    with graph.inserting_before(out):
        packed = graph.call_function(CondOutput, (t.logits, tuple(head_outputs)))
    out.args = (packed,)

    # 7. lint and recompile
    graph.lint()
    gm.recompile()
    gm.train(was_training)
    gm.meta["condattn_config"] = ConvertConfig(
        aux_at=aux_at,
        num_classes=n,
        feeds={h: tuple(v) for h, v in routing.items()},
        conditioned=conditioned,
        cond=cond,
        detach_cond=detach_cond,
        aux_dropout=aux_dropout,
        init=init,
        aux_model=aux_model is not None,
        aux_head=head_kw,
        leaf_modules=tuple(x for x in leaf_modules if isinstance(x, str)),
        example_shape=tuple(example.shape),
    )
    return gm


# --- discovery ------------------------------------------------------------------------------


def _stages_with_attention(t: _Traced) -> dict[str, list[str]]:
    order = _order(t.gm)
    return {
        name: [a for a, an in t.attention.items() if order[an] > order[node]]
        for name, node in t.outputs.items()
    }


def _trace_for_listing(model, leaf_modules, concrete_args, example_input) -> _Traced:
    model = copy.deepcopy(model)
    example = example_input if example_input is not None else _default_example(model)
    return _trace(model, leaf_modules=leaf_modules, concrete_args=concrete_args, example=example)


def list_stages(
    model: nn.Module,
    *,
    example_input: torch.Tensor | None = None,
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> dict[str, list[str]]:
    """Valid ``aux_at`` names (modules with a 4-D output, in network order) -> the attention
    modules after each, i.e. what a single head there would condition."""
    return _stages_with_attention(
        _trace_for_listing(model, leaf_modules, concrete_args, example_input)
    )


def list_attention(
    model: nn.Module,
    aux_at: Sequence[str] | None = None,
    *,
    example_input: torch.Tensor | None = None,
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> dict[str, dict[str, str | None]]:
    """Swappable attention in network order: name -> ``{"kind": ..., "fed_by": head or None}``.

    ``fed_by`` is the ``aux_at`` entry that would condition it under the default routing.
    """
    t = _trace_for_listing(model, leaf_modules, concrete_args, example_input)
    order = _order(t.gm)
    aux_at = [aux_at] if isinstance(aux_at, str) else list(aux_at or [])
    for a in aux_at:
        if a not in t.outputs:
            raise _unknown("aux_at stage", a, list(t.outputs), "See condattn.list_stages(model).")
    result = {}
    for name, node in sorted(t.attention.items(), key=lambda kv: order[kv[1]]):
        before = [a for a in aux_at if order[t.outputs[a]] < order[node]]
        result[name] = {"kind": t.kinds[name], "fed_by": before[-1] if before else None}
    return result


# --- saving ---------------------------------------------------------------------------------


def save(
    model: nn.Module, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save a converted model as its state_dict plus its conversion config (JSON), atomically.

    No GraphModule is pickled: :func:`load` rebuilds the model from its base model.
    """
    cfg = get_config(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "config": cfg.to_json(),
        "state_dict": model.state_dict(),
        "extra": json.dumps(dict(extra or {})),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(
    path: str | os.PathLike,
    base_model: nn.Module,
    *,
    aux_model: nn.Module | None = None,
    map_location: str | torch.device | None = "cpu",
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Rebuild a model saved with :func:`save`: re-convert ``base_model``, then load the weights.

    Args:
        path: the file written by :func:`save`.
        base_model: a model of the same architecture as the one converted (its weights are
            replaced).
        aux_model: the auxiliary model's architecture, if the conversion had one.
        leaf_modules: leaf module *types* given to :func:`convert` (names are saved in the file).
        concrete_args: the ``concrete_args`` given to :func:`convert` (they are not saved).
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch.load raises many types for a foreign file
        raise ValueError(
            f"{path} is not a condattn checkpoint (written by condattn.save): {e}"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a condattn checkpoint (written by condattn.save)")
    cfg = ConvertConfig.from_json(payload["config"])
    if cfg.aux_model and aux_model is None:
        raise ValueError(
            f"{path} was converted with an aux_model: pass aux_model= (its architecture)"
        )
    model = convert(
        base_model,
        cfg.aux_at,
        num_classes=cfg.num_classes,
        feeds={h: list(v) for h, v in cfg.feeds.items()} if cfg.conditioned else None,
        conditioned=cfg.conditioned,
        cond=cfg.cond,
        detach_cond=cfg.detach_cond,
        aux_dropout=cfg.aux_dropout,
        init=cfg.init,
        aux_model=aux_model,
        aux_head=cfg.aux_head,
        example_input=torch.zeros(cfg.example_shape) if cfg.example_shape else None,
        leaf_modules=(*cfg.leaf_modules, *leaf_modules),
        concrete_args=concrete_args,
    )
    model.load_state_dict(payload["state_dict"], strict=True)
    return model
