"""``condattn.add_attention``: put attention blocks into a CNN that has none, keeping its function.

The pass, like :func:`condattn.convert` (one named function per step):

1. :func:`_check` the options (``kind``, ``at``, ``r``, ``init``), naming the valid choices;
2. deep-copy the model (the caller's is never changed) and trace it in train mode and in eval
   mode (:func:`~condattn.transform.tracing.trace_modes`; fx freezes ``self.training``), as
   ``convert`` does;
3. :func:`~condattn.transform.blocks.find_blocks`: the blocks of every stage, and
   :func:`_select` those that ``at`` names;
4. :func:`_plan`: the position of each block's attention, ``"standard"`` (on the residual
   branch, before the add) or ``"post"`` (after the block), the same in both modes;
5. :func:`_insert`: one attention module per block, built once (:func:`build_attention`) and
   called from both graphs;
6. join the graphs into a :class:`~condattn.transform.modes.DualGraphModule` that follows
   ``.train()``/``.eval()``, carry the source's public face, and record each insertion
   (:func:`get_added`, shown by :func:`condattn.list_attention` as ``position``).

The result is an ordinary model with attention of a swap-table type (:class:`SqueezeExcite`,
:class:`Eca`, :class:`Cbam`, :class:`CoordAttn`), so ``convert`` takes it like any other.
With ``init="identity"`` each new block computes the identity: its last layer is zero and its
gate is ``2 * sigmoid`` (:class:`~condattn.nn.ScaledSigmoid`), which is exactly 1 at 0; the
twins copy that gate, so ``convert(init="zeros")`` keeps the function too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from condattn.nn import Cbam, CoordAttn, Eca, ScaledSigmoid, SqueezeExcite
from condattn.transform.blocks import POST, STANDARD, Block, Site, find_blocks, locate
from condattn.transform.config import record, recorded
from condattn.transform.fxutils import ConversionError, node_shape
from condattn.transform.modes import DualGraphModule, _has, finish
from condattn.transform.tracing import Traced, check_mapping, default_example, trace_modes, unknown

__all__ = ["ADDED", "INITS", "KINDS", "Added", "add_attention", "build_attention", "get_added"]

KINDS = ("se", "eca", "cbam", "coord")
INITS = ("identity", "default")
ADDED = "condattn_added"  # the record of the insertions (gm.meta key)


@dataclass(frozen=True)
class Added:
    """One attention block inserted by :func:`add_attention`.

    Attributes:
        name: the new module's qualified name (``layer1.0.se``, ``features.2_se``).
        block: the block it belongs to.
        position: ``"standard"`` (residual branch, before the add) or ``"post"`` (after it).
        kind: ``"se"``, ``"eca"``, ``"cbam"`` or ``"coord"``.
        channels: C.
        reduction: the block's stage, as its downsampling factor r.
    """

    name: str
    block: str
    position: str
    kind: str
    channels: int
    reduction: float


# --- step 1: options ---------------------------------------------------------------------------


def _check(kind: str, at: Any, r: int, init: str) -> list[str] | None:
    """Validate the options; returns ``at`` as a list of names, or None for ``"auto"``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive int, got {r!r}")
    if at == "auto":
        return None
    names = [at] if isinstance(at, str) else list(at)
    if not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"at must be 'auto', a module name or a list of them, got {at!r}")
    return names


def build_attention(kind: str, channels: int, *, r: int = 16, init: str = "identity") -> nn.Module:
    """One attention block of ``kind`` over ``channels``; ``init="identity"``: it computes the
    identity (last layer zero, gate ``2 * sigmoid``), ``"default"``: as built from scratch."""
    _check(kind, "auto", r, init)
    gate = ScaledSigmoid if init == "identity" else nn.Sigmoid
    rd = max(channels // r, min(8, channels))
    if kind == "se":
        block = SqueezeExcite(channels, rd_channels=rd, gate_layer=gate)
        last = [block.fc2]
    elif kind == "eca":
        block = Eca(channels, gate_layer=gate)
        last = [block.conv]
    elif kind == "cbam":
        block = Cbam(channels, rd_channels=rd, gate_layer=gate)
        last = [block.fc2, block.spatial_conv]
    else:
        block = CoordAttn(channels, rd_channels=rd, gate_layer=gate)
        last = [block.conv_h, block.conv_w]
    if init == "identity":
        with torch.no_grad():
            for layer in last:
                for p in layer.parameters():
                    p.zero_()
    return block


# --- steps 2-4: trace, find the blocks, plan the positions --------------------------------------


def _select(blocks: list[Block], names: list[str] | None, t: Traced) -> list[Block]:
    """The blocks ``at`` names: a block, every block under a module (a stage), or any module
    with a 4-D output (attention after it)."""
    if names is None:
        reductions = {b.reduction for b in blocks}
        if len(reductions) < 2:
            found = ", ".join(f"{b.name} ({b.reduction:g}x)" for b in blocks) or "none"
            raise ConversionError(
                "add_attention(at='auto') needs conv blocks in at least two stages of different "
                f"resolution (found: {found}); a pure transformer has none past its patch "
                "embedding. Name the modules with at=, see condattn.list_stages(model)."
            )
        return blocks
    chosen: dict[str, Block] = {}
    by_name = {b.name: b for b in blocks}
    for name in names:
        under = [b for b in blocks if b.name == name or b.name.startswith(name + ".")]
        if not under and name in t.outputs:
            shape = node_shape(t.input)[2:]
            under = [Block(name, float(shape[0] / node_shape(t.outputs[name])[2]))]
        if not under:
            valid = list(by_name) + [n for n in t.outputs if n not in by_name]
            raise unknown("add_attention at", name, valid, "See condattn.list_stages(model).")
        chosen.update({b.name: b for b in under})
    order = t.order()
    return sorted(chosen.values(), key=lambda b: order[t.outputs[b.name]])


def _is_leaf(t: Traced, name: str) -> bool:
    return any(n.op == "call_module" and n.target == name for n in t.gm.graph.nodes)


def _plan(traces: Mapping[bool, Traced], blocks: list[Block]) -> dict[bool, dict[str, Site]]:
    """Each block's site in each mode; standard only where both modes recognise it."""
    plans = {
        mode: {b.name: locate(t, b, leaf=_is_leaf(t, b.name)) for b in blocks}
        for mode, t in traces.items()
    }
    for b in blocks:
        if {plans[m][b.name].position for m in plans} != {STANDARD}:
            for mode, t in traces.items():
                plans[mode][b.name] = Site(POST, t.outputs[b.name])
    return plans


# --- step 5: insert ----------------------------------------------------------------------------


def _target(gm: fx.GraphModule, block: str, position: str, kind: str) -> str:
    """A free name: ``<block>.<kind>`` inside a traced-through block (``<block>.added_<kind>``
    where the block has that name already), else ``<block>_<kind>`` beside it."""
    names = [f"{block}.{kind}", f"{block}.added_{kind}"] if position == STANDARD else []
    names.append(f"{block}_{kind}")
    name = next((n for n in names if not _has(gm, n)), names[-1])
    while _has(gm, name):
        name += "_"
    return name


def _insert(gm: fx.GraphModule, target: str, site: Site) -> None:
    graph = gm.graph
    if site.position == STANDARD:
        with graph.inserting_before(site.add):
            new = graph.call_module(target, (site.node,))
        site.add.replace_input_with(site.node, new)
        return
    with graph.inserting_after(site.node):
        new = graph.call_module(target, (site.node,))
    site.node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)


def _insert_all(traces, plans, blocks, *, kind: str, r: int, init: str) -> dict[str, Added]:
    added: dict[str, Added] = {}
    modules: dict[str, tuple[str, nn.Module]] = {}
    for mode, t in traces.items():
        for b in blocks:
            site = plans[mode][b.name]
            if b.name not in modules:
                c = int(node_shape(site.node)[1])
                target = _target(t.gm, b.name, site.position, kind)
                module = build_attention(kind, c, r=r, init=init).to(**t.like)
                modules[b.name] = (target, module)
                added[target] = Added(target, b.name, site.position, kind, c, b.reduction)
            target, module = modules[b.name]
            t.gm.add_submodule(target, module)
            _insert(t.gm, target, site)
    return added


# --- the pass ----------------------------------------------------------------------------------


def add_attention(
    model: nn.Module,
    /,
    *,
    kind: str = "se",
    at: str | Sequence[str] = "auto",
    r: int = 16,
    init: str = "identity",
    example_input: torch.Tensor | None = None,
    leaf_modules: Sequence[str | type[nn.Module]] = (),
    concrete_args: dict[str, Any] | None = None,
) -> DualGraphModule:
    """Insert an attention block into every block of every stage of a CNN (or where ``at`` says).

    Args:
        model: a CNN that returns logits; it is not modified. Its mode does not matter: the
            result follows ``.train()``/``.eval()``.
        kind: ``"se"`` (:class:`SqueezeExcite`), ``"eca"``, ``"cbam"`` or ``"coord"``.
        at: ``"auto"``: every block of every stage (:mod:`condattn.transform.blocks`); or
            module names: a block, a stage (every block under it), or any module with a 4-D
            output (attention after it).
        r: the reduction ratio of SE, CBAM and coordinate attention (hidden width
            ``max(C // r, min(8, C))``).
        init: ``"identity"``: each block computes the identity, so the model's function is
            kept (fine-tune a trained model into SE, then ``convert``); ``"default"``: the
            from-scratch initialisation (sigmoid gate).
        example_input: an input to infer shapes from (default ``zeros(1, C_in, 32, 32)``).
        leaf_modules: modules (names or types) that fx keeps whole; attention goes after them.
        concrete_args: passed to ``torch.fx.Tracer.trace``.

    Returns:
        A :class:`~condattn.transform.modes.DualGraphModule` with the new blocks;
        :func:`get_added` (and ``list_attention``'s ``position``) says where each went.

    Raises:
        ConversionError: an unknown ``at`` name (with the valid ones), or no conv stages.
        ValueError: an unknown ``kind`` or ``init`` (with the valid ones), or a bad ``r``.
    """
    names = _check(kind, at, r, init)
    training = model.training
    source = copy.deepcopy(model)
    example = example_input if example_input is not None else default_example(source)
    traces = trace_modes(source, check_mapping(None), leaf_modules, concrete_args, example)
    blocks = _select(find_blocks(traces[True], source), names, traces[True])
    plans = _plan(traces, blocks)
    added = _insert_all(traces, plans, blocks, kind=kind, r=r, init=init)
    gm = finish(traces[True].gm, traces[False].gm, source=source, training=training)
    record(gm, ADDED, added)
    return gm


def get_added(model: nn.Module) -> dict[str, Added]:
    """The attention :func:`add_attention` inserted into ``model``, by module name ({} if none)."""
    return dict(recorded(model, ADDED) or {})
