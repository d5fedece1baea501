"""Top-k accuracy, running metric sums (all-reducible) and a JSON-lines writer."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from condattn._io import atomic_write_text

__all__ = ["MetricSums", "read_jsonl", "topk_correct", "write_json", "write_jsonl"]


def topk_correct(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (0-dim tensors).

    ``k`` is capped at the number of classes, so top-5 on a 3-class problem counts every sample.
    """
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices  # (B, kmax)
    hit = top == target.view(-1, 1)  # (B, kmax)
    return [hit[:, : min(k, kmax)].any(dim=-1).sum() for k in ks]


class MetricSums:
    """Sums of per-sample quantities, kept as one float64 tensor so one all-reduce syncs them.

    ``add(loss=..., main=..., aux=(...), logits=..., target=...)`` accumulates the batch's
    ``loss * n``, top-1/top-5 hits and ``n``; :meth:`means` turns the (reduced) sums into means.
    """

    def __init__(self, *, num_aux: int, device: torch.device | str = "cpu") -> None:
        self.num_aux = num_aux
        # layout: [loss, main, aux_0..aux_{k-1}, top1, top5, n]
        self.sums = torch.zeros(num_aux + 5, dtype=torch.float64, device=device)

    def add(
        self,
        *,
        logits: Tensor,
        target: Tensor,
        loss: Tensor | None = None,
        main: Tensor | None = None,
        aux: Sequence[Tensor] = (),
    ) -> None:
        n = target.shape[0]
        if n == 0:
            return
        top1, top5 = topk_correct(logits.detach(), target)
        zero = torch.zeros((), device=self.sums.device)
        parts = [
            loss.detach() * n if loss is not None else zero,
            main.detach() * n if main is not None else zero,
            *(a.detach() * n for a in aux),
            top1,
            top5,
            torch.full((), n, device=self.sums.device),  # a fill, not a host copy: no sync
        ]
        self.sums += torch.stack([p.to(self.sums.device, torch.float64) for p in parts])

    def means(self) -> dict[str, Any]:
        """Means over all samples: loss, main_loss, aux_losses, top1/top5 (%), n."""
        s = self.sums.cpu().tolist()
        n = s[-1]
        div = n if n else math.nan
        k = self.num_aux
        return {
            "loss": s[0] / div,
            "main_loss": s[1] / div,
            "aux_losses": [v / div for v in s[2 : 2 + k]],
            "top1": 100.0 * s[2 + k] / div,
            "top5": 100.0 * s[3 + k] / div,
            "n": int(n),
        }


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]]) -> None:
    """Rewrites a JSON-lines file atomically with ``rows`` (one JSON object per line)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Appends one JSON line and flushes it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete JSON lines of a file (a torn last line from a killed run is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    return list(_iter_lines(p))


def _iter_lines(p: Path) -> Iterator[dict[str, Any]]:
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue
