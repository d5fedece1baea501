"""Step 5 of :func:`condattn.convert`: which attention each aux head conditions.

The paper's routing feeds every attention module from the nearest head before it (aux1 after
stage 2 feeds stage 3, aux2 after stage 3 feeds stage 4); ``feeds=`` overrides it per head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import fx

from condattn.transform.fxutils import ConversionError
from condattn.transform.tracing import Traced, stages_with_attention, unknown

__all__ = ["Head", "route"]


@dataclass(frozen=True)
class Head:
    name: str  # an aux_at entry, or AUX_MODEL
    out: fx.Node  # the head's logits (returned in aux_logits)
    cond: fx.Node  # T as fed to the attention (after the optional softmax / detach)


def _default_routing(t: Traced, heads: Sequence[Head]) -> dict[str, tuple[str, ...]]:
    """The paper's routing: each attention module is fed by the nearest head before it."""
    order = t.order()
    routing: dict[str, list[str]] = {h.name: [] for h in heads}
    for att, site in t.attention.items():
        before = [h.name for h in heads if order[h.out] < order[site.node]]
        if before:
            routing[before[-1]].append(att)
    return {h: tuple(v) for h, v in routing.items()}


def _user_routing(
    t: Traced, heads: Sequence[Head], feeds: Mapping[str, Sequence[str]]
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


def route(
    t: Traced,
    heads: Sequence[Head],
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
