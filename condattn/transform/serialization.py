"""Weights of converted models.

Checkpoints are the state_dict plus the conversion config as JSON. No GraphModule is pickled
(design.md): :func:`load` re-converts a base model with the saved config and loads the weights
into it. :func:`load_base_state_dict` loads the *original* model's weights into a converted one.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, fx, nn

from condattn._io import atomic_torch_save
from condattn.nn import AuxHead
from condattn.transform.config import ConvertConfig, Swap, get_config, swaps_of
from condattn.transform.convert import AUX_MODEL, convert

__all__ = ["LoadResult", "is_saved_model", "load", "load_base_state_dict", "save"]

_FORMAT = "condattn.checkpoint.v1"


def save(
    model: nn.Module, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save a converted model as its state_dict plus its conversion config (JSON), atomically.

    No GraphModule is pickled: :func:`load` rebuilds the model from its base model.

    Args:
        model: a model returned by :func:`condattn.convert`.
        path: the file to write (its folder is created).
        extra: JSON-serialisable facts to keep beside the weights (e.g. an epoch).
    """
    payload = {
        "format": _FORMAT,
        "config": get_config(model).to_json(),
        "state_dict": model.state_dict(),
        "extra": json.dumps(dict(extra or {})),
    }
    return atomic_torch_save(payload, path)


def _read(path: str | os.PathLike, map_location) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch.load raises many types for a foreign file
        raise ValueError(
            f"{path} is not a condattn checkpoint (written by condattn.save): {e}"
        ) from e
    if not is_saved_model(payload):
        raise ValueError(f"{path} is not a condattn checkpoint (written by condattn.save)")
    return payload


def is_saved_model(payload: Any) -> bool:
    """Whether a loaded file is one :func:`save` wrote (the one test of the format)."""
    return isinstance(payload, dict) and payload.get("format") == _FORMAT


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
        map_location: as ``torch.load``'s.
        leaf_modules: leaf module *types* given to :func:`convert` (names are saved in the file).
        concrete_args: the ``concrete_args`` given to :func:`convert` (they are not saved).
    """
    payload = _read(path, map_location)
    cfg = ConvertConfig.from_json(payload["config"])
    if cfg.aux_model and aux_model is None:
        raise ValueError(
            f"{path} was converted with an aux_model: pass aux_model= (its architecture)"
        )
    model = convert(
        base_model,
        cfg,
        feeds=cfg.feeds if cfg.conditioned else None,
        leaf_modules=(*cfg.leaf_modules, *leaf_modules),
        aux_model=aux_model,
        example_input=torch.zeros(cfg.example_shape) if cfg.example_shape else None,
        concrete_args=concrete_args,
    )
    model.load_state_dict(payload["state_dict"], strict=True)
    return model


# --- the original model's weights into a converted model -----------------------------------------

_PROBE = 1_000_000  # probe values start here: exact in float32 and far from any init value


class LoadResult(NamedTuple):
    """Like ``nn.Module.load_state_dict``'s result: keys of the original model's layout."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _probe_map(swap: Swap) -> tuple[dict[str, list[tuple[str, Tensor, Tensor]]], set[str]]:
    """Where each element of a source's tensors lands in its twin.

    Rebuilds the twin from a copy of the source whose tensors hold distinct values (``_PROBE``,
    ``_PROBE + 1``, ...) and finds those values again in the twin, so it works for any builder
    that copies weights (ours reshape and widen them: a 1x1 conv's ``(C/r, C, 1, 1)`` weight becomes
    the C-part ``[:, n:]`` of a Linear's ``(C/r, n + C)``).

    Returns:
        twin key -> ``[(source key, flat positions in the twin, flat positions in the source)]``,
        and the source keys that the twin does not keep verbatim.
    """
    src = copy.deepcopy(swap.source).to_empty(device="cpu").to(torch.float64)
    spans: list[tuple[str, int, int]] = []
    start = 0
    with torch.no_grad():
        for key, t in src.state_dict(keep_vars=True).items():
            t.copy_(torch.arange(_PROBE + start, _PROBE + start + t.numel()).reshape(t.shape))
            spans.append((key, start, t.numel()))
            start += t.numel()
    twin = swap.build(src, channels=swap.channels, cond_dim=swap.cond_dim, init="zeros")
    found: dict[str, list[tuple[str, Tensor, Tensor]]] = {}
    seen = torch.zeros(start, dtype=torch.bool)
    for tkey, t in twin.state_dict().items():
        v = t.detach().to(torch.float64).flatten() - _PROBE
        pos = ((v >= 0) & (v < start) & (v == v.round())).nonzero().flatten()
        g = v[pos].long()
        seen[g] = True
        for key, s0, cnt in spans:
            sel = (g >= s0) & (g < s0 + cnt)
            if sel.any():
                found.setdefault(tkey, []).append((key, pos[sel], g[sel] - s0))
    lost = {key for key, s0, cnt in spans if not seen[s0 : s0 + cnt].all()}
    return found, lost


def _layout(model: nn.Module) -> tuple[set[str], set[str]]:
    """The original model's keys: those kept as they are, and those of swapped modules."""
    swaps = swaps_of(model)
    new = [name for name, m in model.named_children() if isinstance(m, AuxHead)]
    if get_config(model).aux_model:
        new.append(AUX_MODEL)
    under = lambda k, prefixes: any(k.startswith(p + ".") for p in prefixes)  # noqa: E731
    direct = {k for k in model.state_dict() if not under(k, [*new, *swaps])}
    mapped = {f"{p}.{k}" for p, s in swaps.items() for k in s.source.state_dict()}
    return direct, mapped


def _check_shape(key: str, want: torch.Size, got: Tensor) -> None:
    if tuple(got.shape) != tuple(want):
        raise RuntimeError(
            f"size mismatch for {key}: the original model's tensor has shape {tuple(want)}, the "
            f"state_dict's {tuple(got.shape)}"
        )


def load_base_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True
) -> LoadResult:
    """Load the weights of the ORIGINAL (unconverted) model into a converted one.

    So one may convert first and load trained weights afterwards. Keys are the original model's:
    modules that conversion left alone load as they are; a swapped attention module's keys load
    into its twin wherever the twin keeps that weight (a W1 goes into the C-part of the widened
    W1; its T-columns, the aux heads and the aux model keep their current values).

    Args:
        model: a model returned by :func:`condattn.convert` (or :func:`condattn.logits_only`).
        state_dict: ``original_model.state_dict()``, or one of the same architecture.
        strict: require exactly the original model's keys, as ``nn.Module.load_state_dict``.

    Returns:
        :class:`LoadResult`: the original layout's keys missing from ``state_dict`` and the keys
        of ``state_dict`` it does not have (both empty when ``strict``).

    Raises:
        RuntimeError: when ``strict`` and keys are missing or unexpected (all are listed), for a
            shape mismatch, or for a key whose weight the twin does not keep.
        ValueError: if ``model`` was not made by :func:`condattn.convert`.
    """
    direct, mapped = _layout(model)
    missing = sorted((direct | mapped) - set(state_dict))
    unexpected = sorted(set(state_dict) - direct - mapped)
    if strict and (missing or unexpected):
        raise RuntimeError(
            "load_base_state_dict: the state_dict does not match the original model's layout.\n"
            f"  missing keys ({len(missing)}): {missing}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected}\n"
            "Pass strict=False to load what matches."
        )
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in direct & set(state_dict):
            _check_shape(key, own[key].shape, state_dict[key])
            own[key].copy_(state_dict[key])
        for path, swap in swaps_of(model).items():
            _load_swapped(own, path, swap, state_dict)
    return LoadResult(missing, unexpected)


def _load_swapped(own, path: str, swap: Swap, state_dict: Mapping[str, Tensor]) -> None:
    given = {
        k: state_dict[f"{path}.{k}"]
        for k in swap.source.state_dict()
        if f"{path}.{k}" in state_dict
    }
    if not given:
        return
    for k, t in given.items():
        _check_shape(f"{path}.{k}", swap.source.state_dict()[k].shape, t)
    found, lost = _probe_map(swap)
    if lost & set(given):
        raise RuntimeError(
            f"the twin at {path!r} does not keep {sorted(lost & set(given))} of its source as "
            "they are; load_base_state_dict cannot place them"
        )
    for tkey, parts in found.items():
        flat = own[f"{path}.{tkey}"].detach().view(-1)
        for key, at, idx in parts:
            if key in given:
                flat[at] = given[key].reshape(-1)[idx].to(flat.dtype)
