"""The in-place route: conditioning attention that sits inside a module the graph keeps whole.

torch.fx does not trace into *leaf* modules: user ``leaf_modules``, the blocks that timm marks
not traceable (``timm.layers.get_notrace_modules()``: ``NormFreeBlock`` of the NF-ResNets and
NFNets, ...) and blocks with data-dependent Python that have to be named as leaves. Attention
inside such a block has no node of its own in the graph, so the graph route (append T to the
attention's call) cannot reach it. The in-place route does, in three steps:

1. **Discovery** (:class:`InnerAttention`): after tracing, the modules of every ``call_module``
   node (a leaf that is not itself a swappable type) are searched for swappable types; a one-off
   forward pre-hook during shape propagation records which of them run, in which order, and the
   channel count C of their input (the builder's ``channels=``). Attention that the example
   forward does not run is not found.
2. **Swap** (:func:`swap`): the twin replaces the attention *inside* the leaf, at the same
   qualified name, and becomes in place (:func:`make_inplace`): its class turns into a subclass of
   the twin's, ``InPlace<Twin>``, whose ``forward(x)`` reads T from the module itself. It adds no
   parameter, buffer or level: the state_dict keys are exactly those of the twin on the graph
   route (``stages.1.0.attn_last.fc1.weight``), and ``isinstance(m, CondSqueezeExcite)`` holds.
   ``forward(x, cond)`` with an explicit T still works.
3. **Delivery** (:func:`call_leaf`): each call of such a leaf in the graph becomes
   ``call_leaf(leaf, {path: T}, *args)``, which writes T onto the in-place twins at those paths
   (relative to the leaf), runs the leaf, and restores the previous values in a ``finally``.
   T therefore exists only while the leaf runs, and the leaf's call depends on T in the graph, so
   it is always ordered after the head that computes T.

The "context" is thus per model instance and per call: nothing global, nothing in the
state_dict. It survives ``copy.deepcopy``, ``torch.save(model)`` (the in-place class pickles as
its twin's class plus a marker), DDP (which runs the same forward), ``condattn.save``/``load``
(same keys; ``load`` re-converts and takes the same route). A model called twice, or an exception
inside the leaf, leaves no T behind; a twin run outside the converted model's forward (its block
called on its own) raises :class:`RuntimeError`. Concurrent forwards of one model instance from
several Python threads are not supported (they would share the twins' T slot); DataParallel
replicas each have their own twins and are fine.

torch.compile runs: dynamo traces ``call_leaf`` and the attribute writes; where it cannot
(older versions), it breaks the graph around the leaf and runs it eagerly.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, fx, nn

from condattn.transform.fxutils import replace_submodule
from condattn.transform.mappings import Builder, as_builder

__all__ = [
    "GRAPH",
    "INPLACE",
    "InPlaceCond",
    "InnerAttention",
    "InnerSite",
    "call_leaf",
    "inplace_modules",
    "inplace_type",
    "make_inplace",
    "swap",
]

GRAPH = "graph"  # T is an argument of the attention's call in the graph
INPLACE = "in-place"  # T is delivered at run time to a twin inside a leaf module


# --- the in-place twin -------------------------------------------------------------------------


class InPlaceCond:
    """Mixin of the in-place twins: ``forward(x)`` reads T from the slot that :func:`call_leaf`
    fills for the duration of the enclosing leaf's call.

    Mixed in front of a twin's class by :func:`make_inplace`; it has no state of its own.
    """

    _condattn_cond: Tensor | None = None  # T, set by call_leaf only while the leaf runs
    _condattn_name: str = "?"  # the qualified name, for the error message
    _condattn_twin: type[nn.Module]  # the twin class this in-place class extends

    def forward(self, x: Any, cond: Tensor | None = None) -> Any:
        if cond is None:
            cond = self._condattn_cond
        if cond is None:
            raise RuntimeError(
                f"{type(self).__name__} at {self._condattn_name!r} is conditioned in place: it "
                "receives T from the converted model's forward, while its enclosing block runs. "
                "It was called with no T (was its block called outside the converted model?). "
                "Call the converted model, or call this module as module(x, cond)."
            )
        return super().forward(x, cond)  # type: ignore[misc]

    def __reduce_ex__(self, protocol: int):
        """Pickle (``torch.save(model)``, ``copy.deepcopy``) as the twin class plus a marker,
        so that the generated class needs no importable name; T is never pickled."""
        state = dict(self.__dict__)
        state.pop("_condattn_cond", None)
        return (_rebuild, (type(self)._condattn_twin,), state)


@functools.cache
def inplace_type(twin_type: type[nn.Module]) -> type[nn.Module]:
    """``InPlace<Twin>``: the twin's class with :class:`InPlaceCond` in front (one per type)."""
    name = f"InPlace{twin_type.__name__}"
    return type(
        name,
        (InPlaceCond, twin_type),
        {"__module__": __name__, "__qualname__": name, "_condattn_twin": twin_type},
    )


def _rebuild(twin_type: type[nn.Module]) -> nn.Module:
    cls = inplace_type(twin_type)
    return cls.__new__(cls)


def make_inplace(twin: nn.Module, name: str) -> nn.Module:
    """Turn ``twin`` (a fresh ``Cond*`` module) into its in-place form, in place; returns it."""
    assert not isinstance(twin, InPlaceCond), "already in place"
    twin.__class__ = inplace_type(type(twin))
    twin._condattn_name = name
    return twin


# --- delivery ----------------------------------------------------------------------------------


def call_leaf(leaf: nn.Module, conds: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
    """Run ``leaf(*args, **kwargs)`` with T written onto its in-place twins.

    Args:
        leaf: the module the graph keeps whole.
        conds: path of an in-place twin relative to ``leaf`` -> the T it reads during this call.

    When the graph's code is traced again (``torch.load`` of a pickled converted model re-traces
    its code), T is a proxy: the call then records itself as one node, as ``torch.fx.wrap``
    does, instead of being traced into (which would drop the delivery of T).
    """
    proxy = next((a for a in (*conds.values(), *args) if isinstance(a, fx.Proxy)), None)
    if proxy is not None:
        return proxy.tracer.create_proxy("call_function", call_leaf, (leaf, conds, *args), kwargs)
    twins = [leaf.get_submodule(path) for path in conds]
    before = [tw.__dict__.get("_condattn_cond") for tw in twins]
    try:
        for tw, t in zip(twins, conds.values()):
            tw._condattn_cond = t
        return leaf(*args, **kwargs)
    finally:
        for tw, t in zip(twins, before):
            tw._condattn_cond = t


# --- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InnerSite:
    """One swappable attention module inside a leaf: the in-place route's attention site."""

    name: str  # its qualified name in the model
    node: fx.Node  # the (first) call of the leaf that contains it
    kind: str  # the source type's name
    build: Builder
    channels: int | None  # C of its input, as recorded during shape propagation


def _inside(leaf: nn.Module, mapping: Mapping[type[nn.Module], Any]) -> list[tuple[str, nn.Module]]:
    """Swappable modules inside ``leaf`` (not inside another swappable one), in module order."""
    found: list[tuple[str, nn.Module]] = []
    for rel, m in leaf.named_modules():
        if rel and type(m) in mapping and not any(rel.startswith(f + ".") for f, _ in found):
            found.append((rel, m))
    return found


class InnerAttention:
    """The swappable attention inside the leaf modules of a traced graph.

    Use :meth:`recording` around shape propagation; :meth:`sites` then lists the attention that
    ran, in the order it ran, with the channel count of its input.
    """

    def __init__(self, gm: fx.GraphModule, mapping: Mapping[type[nn.Module], Any]):
        self._mapping = mapping
        self._found: dict[str, tuple[fx.Node, nn.Module]] = {}
        self._seen: dict[str, tuple[int, int | None]] = {}  # name -> (call index, C)
        calls = [n for n in gm.graph.nodes if n.op == "call_module"]
        # attention also called in the graph takes the graph route there, not this one
        taken = {id(gm.get_submodule(n.target)) for n in calls}
        for node in calls:
            leaf = gm.get_submodule(node.target)
            if type(leaf) in mapping:
                continue
            for rel, m in _inside(leaf, mapping):
                if id(m) not in taken:  # the first leaf call that contains it
                    taken.add(id(m))
                    self._found[f"{node.target}.{rel}"] = (node, m)

    def _pre_hook(self, name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if name in self._seen:
            return
        x = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        channels = int(x.shape[1]) if x is not None and x.dim() > 1 else None
        self._seen[name] = (len(self._seen), channels)

    @contextlib.contextmanager
    def recording(self) -> Iterator[InnerAttention]:
        """Record, while the block runs, which inner attention runs and its input's channels."""
        handles = [
            m.register_forward_pre_hook(functools.partial(self._pre_hook, name), with_kwargs=True)
            for name, (_, m) in self._found.items()
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def sites(self) -> list[InnerSite]:
        """The inner attention that ran during :meth:`recording`, in the order it first ran."""
        ran = sorted(self._seen, key=lambda name: self._seen[name][0])
        out = []
        for name in ran:
            node, m = self._found[name]
            build = as_builder(self._mapping[type(m)])
            out.append(InnerSite(name, node, type(m).__name__, build, self._seen[name][1]))
        return out


# --- swap --------------------------------------------------------------------------------------


def swap(gm: fx.GraphModule, items: Sequence[tuple[str, fx.Node, nn.Module, fx.Node]]) -> None:
    """Put in-place twins into their leaves and deliver T to them through the graph.

    Args:
        gm: the graph module being converted.
        items: ``(attention name, its leaf's node, twin, T's node)`` per routed inner attention.
    """
    by_leaf: dict[str, dict[str, fx.Node]] = {}
    for name, leaf_node, twin, cond in items:
        leaf = leaf_node.target
        assert name.startswith(leaf + "."), (name, leaf)
        if not isinstance(twin, InPlaceCond):  # the other mode's graph made it in place already
            make_inplace(twin, name)
        replace_submodule(gm, name, twin)
        by_leaf.setdefault(leaf, {})[name[len(leaf) + 1 :]] = cond
    graph = gm.graph
    for node in list(graph.nodes):  # every call of such a leaf gets T, as on the graph route
        if node.op == "call_module" and node.target in by_leaf:
            with graph.inserting_before(node):
                leaf_attr = graph.get_attr(node.target)
            conds = by_leaf[node.target]
            node.op, node.target = "call_function", call_leaf
            node.args = (leaf_attr, dict(conds), *node.args)


def inplace_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The in-place twins of a converted model, by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, InPlaceCond)}
