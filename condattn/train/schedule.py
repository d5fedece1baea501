"""The paper's learning-rate schedule (section 4), stepped once per optimiser step.

- warm-up: over the first ``warmup_epochs`` epochs the lr rises linearly per step, from
  ``lr / W`` at the first step to exactly ``lr`` at the last step of the warm-up
  (``W = warmup_epochs * steps_per_epoch``);
- then ``lr * gamma ** k`` where ``k`` counts the milestones ``<= epoch`` (0-based epochs): with
  the paper's ``milestones=(60, 120, 160)`` and ``gamma=0.2``, epochs 0-59 run at 0.1, 60-119 at
  0.02, 120-159 at 0.004 and 160-199 at 0.0008 (``MultiStepLR`` stepped after each epoch). The
  console, ``metrics.jsonl`` and ``results.json`` number epochs from 1: epochs 1-60 there, 61-120,
  121-160 and 161-200. A milestone counts finished epochs.

``PaperSchedule`` takes epochs. A recipe's ``optim.milestones`` may also be fractions of the
run (``[0.3, 0.6, 0.8]``: 60/120/160 of 200, 9/18/24 of 30), which
:func:`condattn.train.config.milestone_epochs` turns into epochs; epoch milestones at or past the
last epoch are refused (:func:`condattn.train.config.check_schedule`), so a shortened run never
keeps its lr at 0.1 to the end silently.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["PaperSchedule", "make_scheduler"]


class PaperSchedule:
    """``factor(step)``: the lr multiplier at a global optimiser step (0-based).

    Args:
        steps_per_epoch: optimiser steps per epoch.
        warmup_epochs: epochs of linear warm-up (paper: 1; 0 disables it).
        milestones: 0-based epochs at whose start the lr is multiplied by ``gamma``.
        gamma: the decay factor (paper: 1/5).
    """

    def __init__(
        self,
        *,
        steps_per_epoch: int,
        warmup_epochs: int = 1,
        milestones: Sequence[int] = (60, 120, 160),
        gamma: float = 0.2,
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = warmup_epochs * steps_per_epoch
        self.milestones = tuple(sorted(milestones))
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        return self.factor(step)

    def factor(self, step: int) -> float:
        """lr multiplier for the ``step``-th optimiser step of the run."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        epoch = step // self.steps_per_epoch
        return self.gamma ** bisect.bisect_right(self.milestones, epoch)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: PaperSchedule
) -> torch.optim.lr_scheduler.LRScheduler:
    """A ``LambdaLR`` following ``schedule``; call ``.step()`` after every optimiser step.

    Its ``state_dict()`` holds the step counter, so a checkpoint restores the exact position.
    """
    return LambdaLR(optimizer, lr_lambda=schedule)
