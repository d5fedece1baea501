"""compare.png: the test top-1 error per epoch of each variant, and its title.

Split from :mod:`condattn.experiments.summary`, which gathers the numbers; this module only
draws them (matplotlib with the Agg backend, imported when a plot is drawn).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from condattn._io import atomic_path

__all__ = ["plot_error_curves", "plot_title"]


def plot_error_curves(
    histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """Test top-1 error (%) vs epoch per variant: the mean over seeds and a min-max band.

    Args:
        histories: the variant's name in the legend -> one metrics.jsonl history per seed.
        path: the PNG to write (atomically).
        title: the plot title.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    try:
        for i, (v, runs) in enumerate(histories.items()):
            per_epoch: dict[int, list[float]] = {}
            for h in runs:
                for r in h:
                    per_epoch.setdefault(r["epoch"], []).append(100.0 - r["test_top1"])
            if not per_epoch:
                continue
            x = sorted(per_epoch)
            err = [np.asarray(per_epoch[e]) for e in x]
            mean = np.array([e.mean() for e in err])
            lo, hi = np.array([e.min() for e in err]), np.array([e.max() for e in err])
            name = f"{v} (n={len(runs)})"
            style = {"color": f"C{i % 10}", "marker": "o", "label": name}
            if len(x) == 1:  # one epoch: a band has no width; min-max bars, side by side
                dodge = 0.1 * (i - (len(histories) - 1) / 2)
                ax.errorbar(np.add(x, dodge), mean, yerr=[mean - lo, hi - mean], capsize=4, **style)
                ax.set(xticks=x, xlim=(x[0] - 0.5, x[0] + 0.5))
            else:
                ax.plot(x, mean, **style)
                ax.fill_between(x, lo, hi, color=style["color"], alpha=0.2)
        ax.set(xlabel="epoch", ylabel="test top-1 error (%)", title=title or "test top-1 error")
        ax.grid(alpha=0.3)
        ax.legend(title="mean; band: min-max over seeds", fontsize="small")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def plot_title(conditions: Mapping[str, Any]) -> str:
    """compare.png's title: the model and the data's size, not its source (a cache path that
    would run off the figure; compare.md keeps the source)."""
    c = conditions
    size = f"{c['num_train']} train / {c['num_test']} test images"
    return f"{c['model']}: {size}, {c['epochs']} epochs"
