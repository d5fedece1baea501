"""What a run says while it goes: the one-line epoch summary, and, without a progress bar,
:class:`Heartbeat` lines during an epoch (rank 0, to the ``condattn.train.progress`` logger)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from condattn.train.metrics import MetricSums

__all__ = ["LOG_EVERY_S", "Heartbeat", "epoch_message", "show_progress"]

logger = logging.getLogger(__name__)

# Without a progress bar (stdout not a terminal, or system.progress = "off"), rank 0 logs a line
# at least this often (seconds) during an epoch, so that a job under nohup or writing to a log
# file is never silent for minutes. A module constant, so that tests can make it tiny.
LOG_EVERY_S = 30.0


def show_progress(progress: str, *, is_main: bool) -> bool:
    """Whether this process draws tqdm bars (``system.progress``: on, off, auto = a terminal)."""
    if not is_main or progress == "off":
        return False
    return progress == "on" or sys.stdout.isatty()


def epoch_message(row: dict[str, Any], *, epochs: int) -> str:
    """The console line of a finished epoch (a ``metrics.jsonl`` row)."""
    return (
        f"epoch {row['epoch']}/{epochs} loss {row['loss']:.4f} lr {row['lr']:.4g} "
        f"train top1 {row['train_top1']:.2f} test top1 {row['test_top1']:.2f} "
        f"top5 {row['test_top5']:.2f} | {row['epoch_time_s']:.1f} s, {row['img_per_s']:.0f} img/s"
    )


class Heartbeat:
    """Logs ``epoch e/E step k/n | img/s | loss`` at most every :data:`LOG_EVERY_S` seconds.

    Checking the clock costs nothing; the running sums are copied to the host (a sync on a GPU)
    only when a line is due, so the steps in between stay free of host syncs.

    Args:
        epoch: the epoch's 0-based index.
        epochs: the run's epochs.
        steps: the epoch's train steps.
        world_size: processes whose images each step counts.
    """

    def __init__(self, epoch: int, *, epochs: int, steps: int, world_size: int) -> None:
        self.epoch, self.epochs = epoch, epochs
        self.total, self.world_size = steps, world_size
        self.t0 = self.last = time.perf_counter()

    def __call__(self, step: int, sums: MetricSums) -> None:
        if time.perf_counter() - self.last < LOG_EVERY_S:
            return
        m = sums.means()  # this rank's running means so far (the sync happens here)
        self.last = time.perf_counter()
        rate = m["n"] * self.world_size / max(self.last - self.t0, 1e-9)
        logger.info(
            f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.total} | {rate:.0f} img/s "
            f"| loss {m['loss']:.4f} train top1 {m['top1']:.2f}"
        )
