"""``aux_at="auto"``: where the aux heads go, as one pure function of the traced graph.

The rule (paper section 3: heads after the 2nd and 3rd of ResNet's 4 stages, i.e. after
``layer2`` and ``layer3``), read from the spatial sizes that ShapeProp recorded:

1. **Stages.** Take the module outputs on the network's trunk (nodes that every input-to-output
   path passes through, so not the inside of a residual block or of an inline SE), in network
   order, up to the first global pool (a ``*Pool*`` module with a 1x1 output: what follows is the
   classifier). Each has a reduction ``r = 2 ** round(log2(input size / its size))``. A stage is
   one value of r; its **end** is the last output at that r among the *shallowest* module names
   there (``layer2`` rather than ``layer2.1.relu``, ``features.6`` rather than
   ``features.7.block.0``), so heads go after whole stages, as named by the model.
2. **Preferred heads.** With k stages, the ends of stages k-2 and k-1, the two before the last:
   the 2nd and 3rd of 4 (CIFAR ResNets: ``layer2``, ``layer3`` at r = 2 and 4); for ImageNet-style
   networks, whose stem is a stage of its own, the ends at reductions 8 and 16. With 2 stages, the
   end of the first; with 1, none.
3. **Each head conditions something** (SE-R's default routing feeds a head the attention after it,
   up to the next head). A trailing head with no attention after it is dropped; if the first of
   two heads has no attention before the second, the two become one head, at the later end; if no
   preferred head is left, one head goes at the latest stage end that attention follows. If no
   attention follows any stage end, :class:`ConversionError`, except for SE-A on a model with no
   swappable attention at all, which keeps the preferred heads.

The chosen names and a one-line reason are recorded in ``ConvertConfig.aux_at`` and
``ConvertConfig.placement``; :func:`condattn.auto_aux_at` shows them without converting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import fx

from condattn.transform.fxutils import ConversionError, node_shape, trunk_nodes

__all__ = ["AUTO", "Placement", "Stage", "auto_placement"]

AUTO = "auto"


@dataclass(frozen=True)
class Stage:
    """One resolution level of the trunk: its end (a module name) and its reduction r."""

    name: str
    reduction: float


@dataclass(frozen=True)
class Placement:
    """What ``aux_at="auto"`` chose, and why.

    Attributes:
        aux_at: the module names after which heads go, in network order.
        reason: one line: the rule that decided (recorded as ``ConvertConfig.placement``).
        stages: every stage found, in network order (its end and reduction).
    """

    aux_at: tuple[str, ...]
    reason: str
    stages: tuple[Stage, ...]


def _depth(name: str) -> int:
    return name.count(".")


def _is_global_pool(gm: fx.GraphModule, name: str, node: fx.Node) -> bool:
    try:
        module = gm.get_submodule(name)
    except AttributeError:  # traced through and left out of the GraphModule (an empty Sequential)
        return False
    return "Pool" in type(module).__name__ and tuple(node_shape(node)[2:]) == (1, 1)


def _reduction(size: tuple[int, int], shape) -> float:
    ratio = max(size[0] / shape[2], size[1] / shape[3])
    return float(2 ** round(math.log2(ratio)))


def _stages(gm: fx.GraphModule, outputs: Mapping[str, fx.Node]) -> list[tuple[Stage, int]]:
    """Stage ends with their positions in the graph, in network order (rule 1)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    inp = next(n for n in gm.graph.nodes if n.op == "placeholder")
    in_shape = node_shape(inp)
    if in_shape is None or len(in_shape) != 4:
        return []
    trunk = trunk_nodes(gm.graph)
    found = sorted(
        ((order[node], name, node) for name, node in outputs.items() if node in trunk),
        key=lambda x: (x[0], _depth(x[1])),
    )
    levels: dict[float, list[tuple[int, str]]] = {}
    for pos, name, node in found:
        if _is_global_pool(gm, name, node):
            break
        r = _reduction(tuple(in_shape[2:]), node_shape(node))
        levels.setdefault(r, []).append((pos, name))
    ends = []
    for r, members in levels.items():
        shallow = min(_depth(name) for _, name in members)
        pos, name = max((p, n) for p, n in members if _depth(n) == shallow)
        ends.append((Stage(name, r), pos))
    return sorted(ends, key=lambda e: e[1])


def _fmt(r: float) -> str:
    return f"{r:g}x"


def _choose(
    ends: list[tuple[Stage, int]], att: list[int], conditioned: bool
) -> tuple[list[Stage], str]:
    """Rules 2 and 3 on stage ends ``(stage, position)`` and attention positions ``att``."""
    k = len(ends)
    preferred = ends[max(k - 3, 0) : k - 1]  # the ends of stages k-2 and k-1
    rs = " and ".join(_fmt(s.reduction) for s, _ in preferred)
    why = f"ends of the stages at reductions {rs} (of {k} stages; paper: 2nd and 3rd of 4)"
    if not att and not conditioned:
        return [s for s, _ in preferred], why + "; no swappable attention (SE-A)"

    def after(pos: int, until: float = math.inf) -> bool:
        return any(pos < a < until for a in att)

    heads = list(preferred)
    while heads and not after(heads[-1][1]):
        dropped = heads.pop()
        why += f"; no attention after {dropped[0].name!r}: head dropped"
    if len(heads) == 2 and not after(heads[0][1], heads[1][1]):
        why += (
            f"; no attention between {heads[0][0].name!r} and {heads[1][0].name!r}: "
            f"one head at {heads[1][0].name!r}"
        )
        heads = heads[1:]
    if not heads:
        with_att = [e for e in ends if after(e[1])]
        if not with_att:
            names = ", ".join(f"{s.name} ({_fmt(s.reduction)})" for s, _ in ends) or "none"
            raise ConversionError(
                "aux_at='auto': no swappable attention follows any stage end (stages found: "
                f"{names}). Name aux_at explicitly (see condattn.list_stages(model)), use "
                "conditioned=False for heads only (SE-A), or register your attention type "
                "with condattn.register_attention."
            )
        heads = [with_att[-1]]
        why += f"; one head at {heads[0][0].name!r}, the latest stage end followed by attention"
    return [s for s, _ in heads], why


def auto_placement(
    gm: fx.GraphModule,
    outputs: Mapping[str, fx.Node],
    attention: Iterable[fx.Node],
    *,
    conditioned: bool = True,
) -> Placement:
    """Apply the module docstring's rule to a traced, shape-propagated graph.

    Args:
        gm: the traced model (ShapeProp has run: every tensor node has ``tensor_meta``).
        outputs: module name -> its output node (every module called; several names may share a
            node, e.g. ``layer2`` and ``layer2.1``).
        attention: the nodes that would receive T (the swappable attention sites).
        conditioned: False (SE-A) allows a model with no swappable attention.

    Raises:
        ConversionError: when fewer than two resolution levels are found, or no attention
            follows any stage end (SE-R).
    """
    ends = _stages(gm, outputs)
    if len(ends) < 2:
        found = ", ".join(f"{s.name} ({_fmt(s.reduction)})" for s, _ in ends) or "none"
        raise ConversionError(
            "aux_at='auto' needs at least two resolution stages (it places heads at the ends of "
            f"downsampling stages); found: {found}. Name aux_at explicitly, see "
            "condattn.list_stages(model)."
        )
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    att = sorted(order[a] for a in attention)
    heads, why = _choose(ends, att, conditioned)
    return Placement(tuple(s.name for s in heads), why, tuple(s for s, _ in ends))
