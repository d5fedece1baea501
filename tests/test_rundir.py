"""The run-directory config diff (condattn.train.rundir.config_diff): what makes a saved run
the asked one, for reuse by the comparison grid and for resuming."""

from __future__ import annotations

import pytest

from condattn.train.recipe import config_from_dict
from condattn.train.rundir import config_diff


def _optim(milestones: list, epochs: int) -> dict:
    return config_from_dict({"optim": {"milestones": milestones, "epochs": epochs}}).to_dict()


@pytest.mark.parametrize("purpose", ["reuse", "resume"])
def test_fraction_milestones_equal_the_epochs_they_resolve_to(purpose) -> None:
    # a run saved with [5, 9, 12] of 15 is the run a recipe giving [0.3, 0.6, 0.8] asks for
    assert config_diff(_optim([0.3, 0.6, 0.8], 15), _optim([5, 9, 12], 15), purpose=purpose) == []
    assert config_diff(_optim([5, 9, 12], 15), _optim([0.3, 0.6, 0.8], 15), purpose=purpose) == []


def test_other_steps_are_a_difference() -> None:
    diffs = config_diff(_optim([5, 9, 13], 15), _optim([0.3, 0.6, 0.8], 15), purpose="reuse")
    assert diffs == [("optim.milestones", [0.3, 0.6, 0.8], [5, 9, 13])]


def test_extending_a_run_moves_fraction_steps_but_not_epoch_steps() -> None:
    # resume may extend a run (optim.epochs may differ), but fractions of 30 are 9/18/24, not the
    # 5/9/12 the saved run decayed at: resuming it would not be the asked run
    diffs = config_diff(_optim([0.3, 0.6, 0.8], 30), _optim([0.3, 0.6, 0.8], 15), purpose="resume")
    assert [d[0] for d in diffs] == ["optim.milestones"]
    assert config_diff(_optim([5, 9, 12], 30), _optim([5, 9, 12], 15), purpose="resume") == []
