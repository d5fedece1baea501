"""Error-rate curves (paper Figs. 3-5): top-1 error vs epoch, per run and across runs.

Uses matplotlib's non-interactive Agg backend, so it works without a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from condattn._io import atomic_path

__all__ = ["plot_comparison", "plot_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path, fsync=False) as tmp:  # the suffix stays: savefig picks PNG from it
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return Path(path)


def plot_curves(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Train, test (and val) top-1 error (%) vs epoch of one run; written atomically as a PNG.

    Args:
        history: metrics.jsonl rows (``epoch``, ``train_top1``, ``test_top1``, ``val_top1``
            with a val split).
        path: the PNG to write.
        title: the plot title.
    """
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]  # 1-based in metrics.jsonl
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(epochs, [100 - r["train_top1"] for r in history], label="train", marker=".")
        ax.plot(epochs, [100 - r["test_top1"] for r in history], label="test", marker=".")
        if history and history[0].get("val_top1") is not None:
            val = [100 - r["val_top1"] for r in history]
            ax.plot(epochs, val, label="val (held out of train)", marker=".")
        ax.set(xlabel="epoch", ylabel="top-1 error (%)", title=title or "top-1 error")
        ax.grid(alpha=0.3)
        ax.legend()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    *,
    title: str = "top-1 error",
) -> Path:
    """Test (solid) and train (dashed) top-1 error vs epoch for several runs, like Figs. 3-5.

    Args:
        runs: label -> metrics.jsonl rows.
        path: the PNG to write.
        title: the plot title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for i, (label, history) in enumerate(runs.items()):
            colour = f"C{i % 10}"
            epochs = [r["epoch"] for r in history]  # 1-based in metrics.jsonl
            ax.plot(
                epochs, [100 - r["test_top1"] for r in history], color=colour, label=f"{label} test"
            )
            ax.plot(
                epochs,
                [100 - r["train_top1"] for r in history],
                color=colour,
                linestyle="--",
                alpha=0.6,
                label=f"{label} train",
            )
        ax.set(xlabel="epoch", ylabel="top-1 error (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        return _save(fig, path)
    finally:
        plt.close(fig)
