"""What a run says before its first epoch: the lr steps it takes, where the aux heads went and
which attention they feed, and whether its inputs are too small for the network.

Automatic choices (``aux_at = "auto"``, fraction milestones, a model's stage sizes at the data's
image size) are resolved when the run starts; these lines make them visible in the log, and
:func:`conversion_record` keeps the placement and routes in ``results.json``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any

import torch
from torch import nn

from condattn.train.config import OptimConfig, TrainConfig, milestone_epochs
from condattn.transform.config import AUX_HEAD_DEFAULTS, get_config, swaps_of

__all__ = ["conversion_record", "heads_line", "schedule_line", "size_warning", "start_lines"]

logger = logging.getLogger(__name__)

# Short names of the attention kinds in the heads line (others show their type's name).
_KIND = {
    "SqueezeExcite": "SE",
    "SEModule": "SE",
    "EffectiveSEModule": "ESE",
    "Eca": "ECA",
    "EcaModule": "ECA",
    "CecaModule": "CECA",
    "Cbam": "CBAM",
    "CbamModule": "CBAM",
    "LightCbamModule": "light CBAM",
    "CoordAttn": "coord attn",
    "Linear": "inline SE",
    "Conv2d": "inline SE",
}


def schedule_line(o: OptimConfig) -> str:
    """``lr 0.1 (warm-up 1 epoch), x0.2 after epochs 9, 18, 24 (optim.milestones [0.3, 0.6,
    0.8] of 30)``: the steps :func:`~condattn.train.config.milestone_epochs` resolved."""
    steps = milestone_epochs(o)
    warm = f" (warm-up {o.warmup_epochs} epoch{'s' if o.warmup_epochs != 1 else ''})"
    after = f"x{o.gamma:g} after epochs {', '.join(map(str, steps))}" if steps else "no decay"
    given = list(o.milestones)
    dropped = len(given) - len(steps)
    short = f"; {dropped} past the end of this short run, left out" if dropped else ""
    return (
        f"lr {o.lr:g}{warm if o.warmup_epochs else ''}, {after} "
        f"(optim.milestones {given} of {o.epochs}{short})"
    )


def conversion_record(model: nn.Module) -> dict[str, Any] | None:
    """Where the heads went and what they feed (``results.json`` ``conversion``); None for a
    model that :func:`condattn.convert` did not make (variant ``se``)."""
    try:
        c = get_config(model)
    except ValueError:
        return None
    return {
        "aux_at": list(c.aux_at),
        "placement": c.placement,  # "given", or the reason of aux_at = "auto"'s rule
        "feeds": {head: list(names) for head, names in (c.feeds or {}).items()},
        "routes": dict(c.routes),  # attention -> "graph" or "in-place"
        "aux_head": dict(c.aux_head),
        "conditioned": c.conditioned,
    }


def _group(names: list[str]) -> str:
    """``layer3.*`` for names under one parent, else the names themselves."""
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    if len(names) > 1 and common:
        return ".".join(common) + ".*"
    return ", ".join(names)


def heads_line(model: nn.Module) -> str | None:
    """``aux heads: layer2 -> layer3.* (4 SE), layer3 -> layer4.* (4 SE)``; None without heads.
    In-place routes are counted; an ``aux_at = "auto"`` choice carries its reason."""
    rec = conversion_record(model)
    if rec is None:
        return None
    kinds = {name: type(s.source).__name__ for name, s in swaps_of(model).items()}
    parts = []
    for head, names in rec["feeds"].items():
        if not names:
            parts.append(f"{head} -> (no attention)")
            continue
        count = Counter(_KIND.get(kinds.get(n, ""), kinds.get(n, "attention")) for n in names)
        what = ", ".join(f"{n} {kind}" for kind, n in count.items())
        inplace = sum(rec["routes"].get(n) == "in-place" for n in names)
        what += f", {inplace} in place" if inplace else ""
        parts.append(f"{head} -> {_group(names)} ({what})")
    if not rec["conditioned"]:
        parts = [f"{', '.join(rec['aux_at'])} (SE-A: T feeds no attention)"]
    why = f" [aux_at auto: {rec['placement']}]" if rec["placement"] != "given" else ""
    return f"aux heads: {', '.join(parts)}{why}"


def _sizes(cfg: TrainConfig, num_classes: int, image_size: tuple[int, int]) -> dict[str, Any]:
    """The stage ends (``aux_at = "auto"``'s stages) and the output size of every module a head
    may read, traced on the meta device (no memory, no compute) at ``image_size``."""
    from condattn.train.build import create_base
    from condattn.transform.fxutils import node_shape
    from condattn.transform.placement import auto_placement
    from condattn.transform.tracing import check_mapping, trace

    with torch.device("meta"):
        net = create_base(cfg, num_classes=num_classes)
        t = trace(net, check_mapping(None), (), None, torch.zeros(1, 3, *image_size))
    sizes = {name: tuple(node_shape(n)[2:]) for name, n in t.outputs.items()}
    sites = [s.node for s in t.attention.values()]
    stages = auto_placement(t.gm, t.outputs, sites, conditioned=False).stages
    return {"sizes": sizes, "stages": [s.name for s in stages]}


def size_warning(
    cfg: TrainConfig,
    *,
    num_classes: int,
    image_size: tuple[int, int],
    heads: list[str],
) -> str | None:
    """One line when a stage before the last, or the input of an aux head, is smaller than the
    heads' pool (``model.aux_head.pool_size``, default 4); None when all fit or the model cannot
    be traced at that size. Names the stages, their sizes and the image size that works."""
    pool = int(cfg.model.aux_head.get("pool_size", AUX_HEAD_DEFAULTS["pool_size"]))
    try:
        found = _sizes(cfg, num_classes, image_size)
    except Exception as err:  # a model fx cannot trace here: no warning rather than no run
        logger.debug(f"input-size check skipped: {type(err).__name__}: {err}")
        return None
    sizes, stages = found["sizes"], found["stages"]
    small = [s for s in stages[:-1] + heads if s in sizes and min(sizes[s]) < pool]
    small = list(dict.fromkeys(small))
    if not small:
        return None
    side = min(min(sizes[s]) for s in small)
    need = max(image_size) * math.ceil(pool / max(side, 1))
    said = ", ".join(f"{s} {sizes[s][0]}x{sizes[s][1]}" for s in small)
    said += " is" if len(small) == 1 else " are"
    read = [h for h in heads if h in small]
    reads = f"; the aux head at {', '.join(read)} pools it up" if read else ""
    last = stages[-1] if stages else None
    tail = f" (the last stage, {last}, is {sizes[last][0]}x{sizes[last][1]})" if last else ""
    return (
        f"warning: {image_size[0]}x{image_size[1]} inputs are small for {cfg.model.arch}: "
        f"{said} smaller than the aux heads' {pool}x{pool} pool{tail}{reads}; images of "
        f"at least {need} px (data.image_size) fit, or set model.aux_head.pool_size={side}"
    )


def start_lines(
    cfg: TrainConfig, model: nn.Module, *, num_classes: int, image_size: tuple[int, int]
) -> list[tuple[int, str]]:
    """``(logging level, line)`` for the start of a run: the schedule, the heads, and the
    input-size warning if any."""
    lines = [(logging.INFO, schedule_line(cfg.optim))]
    heads = heads_line(model)
    if heads:
        lines.append((logging.INFO, heads))
    rec = conversion_record(model)
    if rec is None:  # no heads, no pool to be too small for
        return lines
    warn = size_warning(cfg, num_classes=num_classes, image_size=image_size, heads=rec["aux_at"])
    if warn:
        lines.append((logging.WARNING, warn))
    return lines
