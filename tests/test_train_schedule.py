"""The paper's lr schedule: per-step linear warm-up over epoch 0, then /5 at epochs 60/120/160."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from condattn.train import train
from condattn.train.config import ConfigError, milestone_epochs
from condattn.train.recipe import config_from_dict, load_recipe
from condattn.train.schedule import PaperSchedule, make_scheduler

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

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


# --- optim.milestones as fractions of the run (issue 23, item 1) ------------------------------


def _recipe(tmp_path: Path, optim: str) -> Path:
    """A user's recipe that inherits the paper's base.toml and sets its own [optim] lines."""
    path = tmp_path / "mine.toml"
    path.write_text(f'base = "{(RECIPES / "base.toml").as_posix()}"\n[optim]\n{optim}\n')
    return path


def test_shorter_budget_inheriting_paper_milestones_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe(_recipe(tmp_path, "epochs = 30"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "optim.milestones [60, 120, 160] lie at or past the last epoch" in msg
    assert "optim.epochs = 30" in msg and "optim.milestones=[0.3, 0.6, 0.8]" in msg
    with pytest.raises(ConfigError, match="at or past the last epoch"):  # also via --set
        load_recipe(RECIPES / "table3" / "se_r_resnet50.toml", ["optim.epochs=2"])
    with pytest.raises(ConfigError, match="at or past the last epoch"):  # and from Python
        train(config_from_dict({"optim": {"epochs": 2}}), data=None, run_dir=tmp_path / "r")


def test_fractions_follow_the_budget(tmp_path: Path) -> None:
    cfg = load_recipe(_recipe(tmp_path, "epochs = 30\nmilestones = [0.3, 0.6, 0.8]"))
    assert cfg.optim.milestones == (0.3, 0.6, 0.8)  # kept as given (config.toml too)
    assert milestone_epochs(cfg.optim) == (9, 18, 24)
    sched = PaperSchedule(steps_per_epoch=1, warmup_epochs=0, milestones=(9, 18, 24))
    lrs = [0.1 * sched.factor(e) for e in range(30)]  # epoch e+1's lr
    decays = [e + 1 for e in range(1, 30) if lrs[e] < lrs[e - 1] - 1e-12]
    assert decays == [10, 19, 25]  # from epoch 10, 19, 25: after 9, 18, 24 finished epochs
    paper = load_recipe(RECIPES / "table3" / "se_r_resnet50.toml").optim
    assert paper.milestones == (60, 120, 160) and milestone_epochs(paper) == (60, 120, 160)
    frac = dataclasses.replace(paper, milestones=(0.3, 0.6, 0.8))
    assert milestone_epochs(frac) == (60, 120, 160)  # the paper's steps exactly
    assert milestone_epochs(dataclasses.replace(frac, epochs=15)) == (5, 9, 12)
    # a run too short for a step leaves it out, rather than stepping after training ended
    assert milestone_epochs(dataclasses.replace(frac, epochs=2)) == (1,)
    assert milestone_epochs(dataclasses.replace(frac, epochs=1)) == ()
    over = load_recipe(RECIPES / "quick.toml", ["optim.epochs=10"]).optim
    assert milestone_epochs(over) == (6,)  # quick.toml's 0.6: after 2 of 3, after 6 of 10
    assert load_recipe(RECIPES / "quick.toml", ["optim.milestones=0.5,0.75"]).optim.milestones == (
        0.5,
        0.75,
    )


@pytest.mark.parametrize("milestones", [[0.3, 60], [0.6, 0.3], [4.5], [0], [-1], [1.0, 0.5], ["x"]])
def test_bad_milestones_are_refused(milestones: list) -> None:
    with pytest.raises(ConfigError, match=r"optim\.milestones"):
        config_from_dict({"optim": {"milestones": milestones}})
