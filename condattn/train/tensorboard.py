"""TensorBoard event files of a run: ``RUN_DIR/tensorboard/``, one point per epoch.

``tensorboard --logdir OUT`` then shows every run under OUT (a whole ``compare`` grid or a paper
table) side by side, while they train. The scalars are those of the ``metrics.jsonl`` row:

    loss/train  loss/test  top1/train  top1/test  top5/train  top5/test  lr  img_per_s  epoch_time_s

The JSONL, the plots and the results stay the record; the event files are a view for watching.
They need the ``tensorboard`` package (``pip install 'condattn[tensorboard]'``); without it a run
trains as before and says once that it writes no event files. A resumed run purges the events of
the epochs its checkpoint does not cover, so each epoch shows once. ``CONDATTN_TENSORBOARD=0``
turns the event files off.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["TB_DIR", "EpochWriter", "available"]

TB_DIR = "tensorboard"
# metrics.jsonl key -> TensorBoard tag.
_TAGS = {
    "loss": "loss/train",
    "test_loss": "loss/test",
    "train_top1": "top1/train",
    "test_top1": "top1/test",
    "train_top5": "top5/train",
    "test_top5": "top5/test",
    "lr": "lr",
    "img_per_s": "img_per_s",
    "epoch_time_s": "epoch_time_s",
}
_log = logging.getLogger(__name__)
_warned = False


def available() -> bool:
    """True when the event files can be written (the package is there, and not turned off)."""
    if os.environ.get("CONDATTN_TENSORBOARD", "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return importlib.util.find_spec("tensorboard") is not None


class EpochWriter:
    """Writes one point per scalar per epoch; opens the event file at the first epoch it sees.

    Args:
        run_dir: the run directory; the events go to ``run_dir/tensorboard/``.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir) / TB_DIR
        self._writer: Any = None
        self._off = not available()

    def log_epoch(self, row: dict[str, Any], *, last: bool = False) -> None:
        """Adds the epoch's scalars (``row`` is a ``metrics.jsonl`` line) and flushes; ``last``
        closes the event file (a crash before it loses nothing: every epoch is flushed)."""
        global _warned
        if self._off:
            if not _warned and os.environ.get("CONDATTN_TENSORBOARD", "1") != "0":
                _log.warning(
                    "no TensorBoard event files: the tensorboard package is missing; "
                    "pip install 'condattn[tensorboard]' to get them"
                )
                _warned = True
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # deferred: optional and slowish

            # purge_step: drop events of epochs >= this one written by a killed earlier start.
            self._writer = SummaryWriter(str(self.dir), purge_step=int(row["epoch"]))
        for key, tag in _TAGS.items():
            if row.get(key) is not None:
                self._writer.add_scalar(tag, float(row[key]), int(row["epoch"]))
        self._writer.flush()
        if last:
            self.close()

    def close(self) -> None:
        """Closes the event file (idempotent)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
