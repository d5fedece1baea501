"""Discovery: where ``aux_at`` can go and which attention a conversion would condition.

``list_stages``, ``list_attention`` and ``auto_aux_at`` play the role of torchvision's
``get_graph_node_names``: they trace a copy of the model exactly as :func:`condattn.convert` does
(:mod:`condattn.transform.tracing`, step 3) and report names, without converting. Part of the
transform layer (docs/design.md, 2.2).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from condattn.transform.add_attention import ADDED
from condattn.transform.config import recorded
from condattn.transform.placement import AUTO, Placement, auto_placement
from condattn.transform.tracing import (
    Traced,
    check_mapping,
    default_example,
    stages_with_attention,
    trace,
    unknown,
)

__all__ = ["auto_aux_at", "list_attention", "list_stages"]


def _trace_for_listing(model, leaf_modules, concrete_args, example_input, mapping) -> Traced:
    mapping = check_mapping(mapping)
    model = copy.deepcopy(model)
    example = example_input if example_input is not None else default_example(model)
    return trace(model, mapping, leaf_modules, concrete_args, example)


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
    return stages_with_attention(
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

    The rule is in :mod:`condattn.transform.placement` (and docs/howto-convert.md): heads at
    the ends of the two stages before the last downsampling stage (``layer2``/``layer3`` of a
    ResNet), moved or merged so that each head conditions some attention.

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
    "route": "graph" or "in-place"}``, plus ``"position"`` (``"standard"`` or ``"post"``) for
    attention that :func:`condattn.add_attention` inserted. The route is ``"in-place"`` for
    attention inside a module that fx keeps whole (a leaf: ``leaf_modules``, timm's
    not-traceable blocks), which :mod:`condattn.transform.inplace` conditions without a node
    of its own in the graph.

    ``fed_by`` is the ``aux_at`` entry (``"auto"`` resolves as in :func:`convert`) that would
    condition it under the default routing.
    """
    added = recorded(model, ADDED) or {}
    t = _trace_for_listing(model, leaf_modules, concrete_args, example_input, mapping)
    order = t.order()
    if aux_at == AUTO:
        aux_at = auto_placement(t.gm, t.outputs, [s.node for s in t.attention.values()]).aux_at
    aux_at = [aux_at] if isinstance(aux_at, str) else list(aux_at or [])
    for a in aux_at:
        if a not in t.outputs:
            raise unknown("aux_at stage", a, list(t.outputs), "See condattn.list_stages(model).")
    result = {}
    for name, site in t.attention.items():
        before = [a for a in aux_at if order[t.outputs[a]] < order[site.node]]
        fed_by = before[-1] if before else None
        result[name] = {"kind": site.kind, "fed_by": fed_by, "route": site.route}
        if name in added:  # inserted by add_attention: "standard" or "post"
            result[name]["position"] = added[name].position
    return result
