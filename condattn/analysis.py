"""Attention statistics: how much the gate s discriminates between channels (paper section 6).

The paper's Fig. 6 feeds 128 CIFAR-100 test images to an SE-ResNet and to its SE-R twin and
plots, per image, the standard deviation of s across channels for one SE block of stage 3 (the
lowest-mean-std block of SE-R in red, the highest-mean-std block of SE in gray). A larger std
means the attention tells channels apart more sharply.

Every attention block computes its gate in ``_scale(x[, cond])``. :func:`record_gates` records
it by giving each attention module an *instance* attribute ``_scale`` that wraps the class's
method, and deletes those attributes afterwards (in a ``finally``), so the model is left exactly
as it was. This works for plain models and for ``condattn.convert`` outputs alike (fx calls the
modules by name). Blocks whose ``forward`` does not call ``_scale`` are not seen.

The command ``condattn analyze`` (:mod:`condattn.cli.analyze`) runs this on checkpoints.

>>> stats = attention_stats(model, images, stage="layer3")
>>> stats["blocks"]["layer3.0.attn"]["mean_std"]
>>> plot_attention_std(se_stats, se_r_stats, labels=("SE", "SE-R"), path="fig6.png")
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "attention_modules",
    "attention_stats",
    "channel_std",
    "plot_attention_std",
    "record_gates",
]


def attention_modules(model: nn.Module, *, stage: str | None = None) -> dict[str, nn.Module]:
    """Modules whose class defines ``_scale`` (every condattn attention block), by name.

    Args:
        model: any model.
        stage: keep only names equal to ``stage`` or starting with ``stage + "."``.
    """
    return {
        name: m
        for name, m in model.named_modules()
        if callable(getattr(type(m), "_scale", None))
        and (stage is None or name == stage or name.startswith(stage + "."))
    }


@contextlib.contextmanager
def record_gates(
    model: nn.Module, *, stage: str | None = None
) -> Iterator[dict[str, list[Tensor]]]:
    """Record the output of every attention module's ``_scale`` while the block runs.

    Yields a dict ``name -> list of s`` (one detached tensor per call, in call order) that fills
    as the model runs. On exit the instance attributes are removed again, even on error.
    """
    records: dict[str, list[Tensor]] = {}
    patched: list[tuple[nn.Module, Any]] = []  # (module, previous instance attribute or _MISSING)
    try:
        for name, m in attention_modules(model, stage=stage).items():
            records[name] = []
            original = m._scale  # the bound method (or an instance attribute set by someone else)

            def wrapper(*args: Any, _orig: Any = original, _rec=records[name], **kwargs: Any):
                s = _orig(*args, **kwargs)
                _rec.append(s.detach())
                return s

            patched.append((m, m.__dict__.get("_scale", _MISSING)))
            m.__dict__["_scale"] = wrapper
        yield records
    finally:
        for m, previous in reversed(patched):
            if previous is _MISSING:
                m.__dict__.pop("_scale", None)
            else:
                m.__dict__["_scale"] = previous


_MISSING = object()


def channel_std(s: Tensor) -> Tensor:
    """Per-image standard deviation of the gate across channels, shaped ``(B,)``.

    ``s`` is ``(B, C, 1, 1)`` for SE/ECA (one weight per channel) or ``(B, C, H, W)`` for gates
    with a spatial part (CBAM, coordinate attention); then the std across channels is taken at
    each position and averaged over positions. Population std (``correction=0``, numpy's).
    """
    if s.dim() == 2:
        s = s[:, :, None, None]
    if s.dim() != 4:
        raise ValueError(f"expected a gate of shape (B, C, ...), got {tuple(s.shape)}")
    return s.float().std(dim=1, correction=0).flatten(1).mean(1)


def _stage_of(name: str) -> str:
    return name.split(".", 1)[0]


@torch.no_grad()
def attention_stats(
    model: nn.Module,
    images: Tensor,
    *,
    stage: str | None = None,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Per-block statistics of the gate s over ``images``, in network order.

    The model runs in eval mode under ``no_grad`` (its mode is restored afterwards).

    Args:
        model: a plain or converted model with condattn attention blocks.
        images: normalised input images ``(N, C, H, W)`` (the paper: 128 test images).
        stage: only blocks under this module name (e.g. ``"layer3"``); None: all.
        batch_size: images per forward pass.

    Returns:
        ``{"n_images": N, "stage": stage, "order": [names], "blocks": {name: {...}}}`` where each
        block has ``kind``, ``stage``, ``channels``, ``gate_shape`` (of one image),
        ``std_per_image`` (N floats: std of s across channels, :func:`channel_std`),
        ``mean_std``, ``median_std``, ``std_of_std``, and ``s_mean``/``s_min``/``s_max``.

    Raises:
        ValueError: no attention block (under ``stage``) ran.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty (N, C, H, W) batch, got {tuple(images.shape)}"
        )
    mods = attention_modules(model, stage=stage)
    was_training = model.training
    model.eval()
    try:
        blocks = _run_and_summarise(model, images, stage=stage, batch_size=batch_size)
    finally:
        model.train(was_training)
    if not blocks:
        where = f" under {stage!r}" if stage else ""
        raise ValueError(
            f"no attention block{where} ran its _scale (found {len(mods)} attention modules"
            f"{where}: {list(mods)[:10]}). Check stage= against model.named_modules()."
        )
    for name, block in blocks.items():
        block["kind"] = type(mods[name]).__name__
    return {
        "n_images": int(images.shape[0]),
        "stage": stage,
        "order": list(blocks),
        "blocks": blocks,
    }


class _GateSummary:
    """Running statistics of one block's gate s over the batches: per-image std, mean, range."""

    def __init__(self, shape: list[int]) -> None:
        self.shape = shape  # the gate of one image, e.g. [C, 1, 1]
        self.stds: list[Tensor] = []
        self.total, self.count, self.lo, self.hi = 0.0, 0, math.inf, -math.inf

    def add(self, s: Tensor) -> None:
        self.stds.append(channel_std(s).cpu())
        sf = s.float()
        self.total += float(sf.sum())
        self.count += sf.numel()
        self.lo, self.hi = min(self.lo, float(sf.min())), max(self.hi, float(sf.max()))

    def as_dict(self, name: str) -> dict[str, Any]:
        per_image = torch.cat(self.stds)
        return {
            "stage": _stage_of(name),
            "channels": self.shape[0],
            "gate_shape": self.shape,
            "std_per_image": per_image.tolist(),
            "mean_std": float(per_image.mean()),
            "median_std": float(per_image.median()),
            "std_of_std": float(per_image.std(correction=0)),
            "s_mean": self.total / self.count,
            "s_min": self.lo,
            "s_max": self.hi,
        }


def _run_and_summarise(
    model: nn.Module, images: Tensor, *, stage: str | None, batch_size: int
) -> dict[str, dict[str, Any]]:
    """Runs ``images`` through ``model`` in batches; each block's summary, in network order."""
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else images.device
    summaries: dict[str, _GateSummary] = {}  # insertion order = first call = network order
    with record_gates(model, stage=stage) as rec:
        for start in range(0, images.shape[0], batch_size):
            for v in rec.values():
                v.clear()
            model(images[start : start + batch_size].to(device))
            for name, calls in rec.items():
                for s in calls:
                    summaries.setdefault(name, _GateSummary(list(s.shape[1:]))).add(s)
    return {name: g.as_dict(name) for name, g in summaries.items()}


def _stage_blocks(stats: Mapping[str, Any], stage: str | None) -> dict[str, Mapping[str, Any]]:
    blocks = {
        k: v
        for k, v in stats["blocks"].items()
        if stage is None or k == stage or k.startswith(stage + ".")
    }
    if not blocks:
        raise ValueError(f"no attention blocks under {stage!r} in these stats: {stats['order']}")
    return blocks


def plot_attention_std(
    stats_a: Mapping[str, Any],
    stats_b: Mapping[str, Any],
    *,
    labels: Sequence[str] = ("SE", "SE-R"),
    path: str | Path,
    stage: str | None = "layer3",
) -> Path:
    """Paper Fig. 6: per-image std of s for one block of each model, plus every block's mean.

    Left: x = image index, y = std of s across channels. ``stats_b`` (the modified model,
    e.g. SE-R) in red, its block with the *lowest* mean std; ``stats_a`` (the original, e.g.
    SE) in gray, its block with the *highest* mean std, as in the paper. Right: the median std
    (with the interquartile range over images) of every block of ``stage``, for both models.

    Returns:
        ``path`` (a PNG).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    a_blocks, b_blocks = _stage_blocks(stats_a, stage), _stage_blocks(stats_b, stage)
    a_name = max(a_blocks, key=lambda k: a_blocks[k]["mean_std"])
    b_name = min(b_blocks, key=lambda k: b_blocks[k]["mean_std"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for name, blocks, label, color in (
        (a_name, a_blocks, labels[0], "0.55"),
        (b_name, b_blocks, labels[1], "tab:red"),
    ):
        y = blocks[name]["std_per_image"]
        ax1.plot(
            range(len(y)),
            y,
            color=color,
            lw=1.2,
            label=f"{label}: {name} (mean {blocks[name]['mean_std']:.3f})",
        )
    ax1.set_xlabel("image index")
    ax1.set_ylabel("std of s across channels")
    ax1.set_title(
        f"{stage or 'all stages'}: {labels[1]} lowest-mean vs {labels[0]} highest-mean block"
    )
    ax1.legend(fontsize=8)
    for blocks, label, color, dx in (
        (a_blocks, labels[0], "0.55", -0.1),
        (b_blocks, labels[1], "tab:red", 0.1),
    ):
        meds, lo, hi = [], [], []
        for v in blocks.values():
            q1, med, q3 = torch.tensor(v["std_per_image"]).quantile(torch.tensor([0.25, 0.5, 0.75]))
            meds.append(float(med))
            lo.append(float(med - q1))
            hi.append(float(q3 - med))
        xs = [i + dx for i in range(len(meds))]
        ax2.errorbar(xs, meds, yerr=[lo, hi], fmt="o", color=color, label=label, capsize=2)
    n = max(len(a_blocks), len(b_blocks))
    names = list(a_blocks) if len(a_blocks) >= len(b_blocks) else list(b_blocks)
    ax2.set_xticks(
        range(n),
        [k.removeprefix(f"{stage}.") if stage else k for k in names],
        rotation=60,
        fontsize=7,
    )
    ax2.set_ylabel("std of s: median over images, IQR bars")
    ax2.set_title("every block")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
