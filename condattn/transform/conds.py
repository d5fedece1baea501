"""What T is and how it enters the attention: condattn's controls and extensions of Eq. 4.

The paper feeds the aux logits T into W1 by concatenation (``cond="logits"``,
``cond_mode="concat"``). To say *why* SE-R helps, and to serve many classes, the transform
offers (docs/concepts.md, "Controls and extensions", all marked as condattn's, not the paper's):

- ``cond`` (what T is), wired as a choice of graph node, so the twins see only a tensor:
  ``logits``; ``probs`` (their softmax); ``features`` (the head's penultimate activations,
  ``AuxHead(..., features=True)``: more information than the result, same place); ``shuffled``
  (the logits of *another* image of the batch, :func:`shuffle_batch`: same statistics, same
  parameters, but not this image's result).
- ``cond_rank`` k: one learned projection ``P_h: T -> P_h T`` of width k per head, before T
  enters the blocks, so each block's T-map takes k inputs instead of n (many classes).
- ``cond_mode``: ``concat`` (Eq. 4) or ``film`` (:class:`condattn.nn.CondFilm`:
  ``s = gate(γ(T) ⊙ a + β(T))``), with the table :func:`film_gate` of each type's gate.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, fx, nn

from condattn.nn.film import CondFilm
from condattn.transform.fxutils import ConversionError
from condattn.transform.mappings import Builder, builds

__all__ = ["CONDS", "COND_MODES", "cond_chain", "film_builder", "film_gate", "shuffle_batch"]

# what T is: the paper's raw logits (our reading), their softmax, and the two controls
CONDS = ("logits", "probs", "features", "shuffled")
# how T enters: the paper's concatenation into W1 (Eq. 4), or FiLM of the gate's pre-activation
COND_MODES = ("concat", "film")


def shuffle_batch(t: Tensor) -> Tensor:
    """T of another image: row ``i`` gets row ``i - 1`` (a fixed derangement of the batch, the
    same in train and eval). A batch of one has no other image: its T is zeros."""
    if t.shape[0] < 2:
        return torch.zeros_like(t)
    return torch.roll(t, 1, dims=0)


torch.fx.wrap("shuffle_batch")  # one call in the graph, not its Python branch


def cond_chain(
    graph: fx.Graph, head_out: fx.Node, *, cond: str, detach: bool, proj: str | None
) -> fx.Node:
    """T as the attention reads it, from a head's output node (its logits, or ``(logits, h)``
    for ``cond="features"``): softmax / shuffle / feature pick, then ``detach``, then the
    ``cond_rank`` projection (module ``proj``). Nodes go right after ``head_out``."""
    t = head_out
    steps: list[tuple[str, object, tuple, dict]] = []
    if cond == "probs":
        steps.append(("call_function", torch.softmax, (), {"dim": 1}))
    elif cond == "shuffled":
        steps.append(("call_function", shuffle_batch, (), {}))
    if detach:
        steps.append(("call_method", "detach", (), {}))
    if proj is not None:
        steps.append(("call_module", proj, (), {}))
    for op, target, args, kwargs in steps:
        with graph.inserting_after(t):
            t = graph.create_node(op, target, (t, *args), kwargs)
    return t


# --- FiLM: the gate of each attention type --------------------------------------------------

# "module.QualName" of a source type -> the path of its gate module (or why it has none)
_GATES = {
    "condattn.nn.squeeze_excite.SqueezeExcite": "gate",
    "condattn.nn.cbam.Cbam": "channel_gate",
    "condattn.nn.coord_attn.CoordAttn": "gate",
    "condattn.nn.eca.Eca": "gate",
    "torchvision.ops.misc.SqueezeExcitation": "scale_activation",
    "timm.layers.squeeze_excite.SEModule": "gate",
    "timm.layers.squeeze_excite.EffectiveSEModule": "gate",
    "timm.layers.eca.EcaModule": "gate",
    "timm.layers.eca.CecaModule": "gate",
    "timm.layers.cbam.CbamModule": "channel.gate",
    "timm.layers.coord_attn.CoordAttn": "gate",
    "timm.models._efficientnet_blocks.SqueezeExcite": "gate",
    "timm.layers.gather_excite.GatherExcite": "gate",
    "timm.layers.global_context.GlobalContext": "gate",
}
_NO_GATE = {
    "timm.layers.cbam.LightCbamModule": "its channel gate is a sigmoid written inline in "
    "forward, not a module that FiLM can wrap",
    "timm.layers.selective_kernel.SelectiveKernel": "its gate is a softmax across kernel "
    "branches: scaling and shifting those logits re-mixes branches, which is not FiLM of a gate",
    "timm.layers.split_attn.SplitAttn": "its gate is a softmax across radix splits: scaling and "
    "shifting those logits re-mixes splits, which is not FiLM of a gate",
}


def _key(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def film_gate(src: nn.Module) -> str:
    """The path of ``src``'s gate module, which ``cond_mode="film"`` conditions.

    Raises:
        ConversionError: the type has no such gate (with the reason), or is not in the table.
    """
    key = _key(type(src))
    if key in _NO_GATE:
        raise ConversionError(f"cond_mode='film' is not defined for {key}: {_NO_GATE[key]}")
    path = _GATES.get(key)
    if path is None:
        raise ConversionError(
            f"cond_mode='film' does not know the gate of {key}; types it knows: "
            f"{', '.join(sorted(_GATES))}. Use cond_mode='concat' for this model."
        )
    owner = src
    for part in path.split("."):
        owner = getattr(owner, part, None)
    if owner is None:  # e.g. timm's GlobalContext without its scale branch
        raise ConversionError(f"cond_mode='film': this {type(src).__name__} has no {path!r} gate")
    return path


def film_builder(src: nn.Module) -> Builder:
    """The builder of ``src``'s FiLM twin: ``CondFilm.from_module`` with its gate's path."""
    return builds(CondFilm)(functools.partial(CondFilm.from_module, gate=film_gate(src)))
