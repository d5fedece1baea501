"""The paper's lr schedule: per-step linear warm-up over epoch 0, then /5 at epochs 60/120/160."""

from __future__ import annotations

import pytest
import torch

from condattn.train.schedule import PaperSchedule, make_scheduler

STEPS = 391  # CIFAR-100 at batch 128 (drop_last: 390)


def lr_at(epoch: int, step: int = 0, *, steps: int = STEPS) -> float:
    return 0.1 * PaperSchedule(steps_per_epoch=steps).factor(epoch * steps + step)


def test_warmup_is_linear_per_step() -> None:
    assert lr_at(0, 0) == pytest.approx(0.1 / STEPS)
    assert lr_at(0, 0) < 0.001
    assert lr_at(0, STEPS // 2) == pytest.approx(0.1 * (STEPS // 2 + 1) / STEPS)
    assert lr_at(0, STEPS - 1) == pytest.approx(0.1)  # reaches 0.1 at the end of epoch 0
    diffs = {round(lr_at(0, s + 1) - lr_at(0, s), 12) for s in range(STEPS - 1)}
    assert len(diffs) == 1


@pytest.mark.parametrize(
    ("epoch", "lr"),
    [
        (1, 0.1),
        (59, 0.1),
        (60, 0.02),
        (119, 0.02),
        (120, 0.004),
        (159, 0.004),
        (160, 0.0008),
        (199, 0.0008),
    ],
)
def test_step_decay(epoch: int, lr: float) -> None:
    assert lr_at(epoch, 0) == pytest.approx(lr)
    assert lr_at(epoch, STEPS - 1) == pytest.approx(lr)


def test_scheduler_drives_optimizer_and_resumes() -> None:
    steps = 4
    p = torch.nn.Parameter(torch.zeros(1))

    def make():
        opt = torch.optim.SGD([p], lr=0.1)
        sched = PaperSchedule(steps_per_epoch=steps, milestones=(2, 3), gamma=0.2)
        return opt, make_scheduler(opt, sched)

    opt, sched = make()
    seen = []
    for _ in range(4 * steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * (s + 1) / steps for s in range(steps)] + [0.1] * steps
    expected += [0.02] * steps + [0.004] * steps
    assert seen == pytest.approx(expected)
    # A state dict taken mid-run restores the exact position.
    opt, sched = make()
    for _ in range(6):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 6
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)


def test_warmup_can_be_disabled() -> None:
    s = PaperSchedule(steps_per_epoch=10, warmup_epochs=0)
    assert s.factor(0) == 1.0
