"""What a run shows and keeps (issue 23): the start lines (lr steps, where the aux heads went and
what they feed, inputs too small for the network), the epoch line's lr, the conversion record in
results.json, and a finished run's light checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import condattn_log

import condattn
from condattn.cli import main
from condattn.data import synthetic_cifar100
from condattn.models import create_model
from condattn.train import loop
from condattn.train.checkpoint import load_checkpoint, model_from_checkpoint, read_init_weights
from condattn.train.config import OptimConfig
from condattn.train.preflight import heads_line, schedule_line, size_warning
from condattn.train.progress import epoch_message
from condattn.train.recipe import config_from_dict
from condattn.train.rundir import RunState, run_state

STEPS = 4  # 128 synthetic images, batch 32


def _cfg(**sections: dict) -> object:
    base = {
        "model": {"arch": "se_resnet18", "variant": "se_r", "widths": [8, 8, 16, 16]},
        "loss": {"aux_weights": [0.3, 0.3]},
        "optim": {"epochs": 2, "batch_size": 32, "milestones": [0.5]},
        "system": {"threads": 1, "progress": "off"},
    }
    return config_from_dict({k: {**v, **sections.get(k, {})} for k, v in base.items()})


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One finished 2-epoch SE-R run (aux_at = "auto") and its log lines."""
    run = tmp_path_factory.mktemp("run") / "r"
    lines: list[str] = []
    with condattn_log(lines.append):
        loop.train(
            _cfg(model={"aux_at": "auto"}),
            data=synthetic_cifar100(n_train=128, n_test=32),
            run_dir=run,
        )
    return run, lines


def test_start_lines_say_the_schedule_and_the_heads(finished) -> None:
    _, lines = finished
    assert "lr 0.1 (warm-up 1 epoch), x0.2 after epochs 1 (optim.milestones [0.5] of 2)" in lines
    heads = [line for line in lines if line.startswith("aux heads: ")]
    assert heads == [
        "aux heads: layer2 -> layer3.* (2 SE), layer3 -> layer4.* (2 SE) [aux_at auto: ends of "
        "the stages at reductions 2x and 4x (of 4 stages; paper: 2nd and 3rd of 4)]"
    ]
    assert lines.index(heads[0]) < min(i for i, x in enumerate(lines) if x.startswith("epoch "))
    assert not [line for line in lines if "warning" in line]  # 32 px fits the CIFAR zoo


def test_epoch_line_shows_the_lr_at_the_epochs_end(finished) -> None:
    run, lines = finished
    epochs = [line for line in lines if re.match(r"epoch \d/2 loss", line)]
    # epoch 1: warm-up from 0.1/4 at its first step to 0.1 at its last; epoch 2: /5 throughout
    assert " lr 0.025->0.1 " in epochs[0] and " lr 0.02 " in epochs[1]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert (rows[0]["lr"], rows[0]["lr_last"]) == pytest.approx((0.1 / STEPS, 0.1))
    assert epoch_message({**rows[1], "lr": 0.02, "lr_last": 0.02}, epochs=2).count("lr 0.02 ") == 1


def test_results_record_the_placement_and_routes(finished) -> None:
    run, _ = finished
    rec = json.loads((run / "results.json").read_text())["conversion"]
    assert rec["aux_at"] == ["layer2", "layer3"]
    assert rec["placement"].startswith("ends of the stages")
    assert rec["feeds"] == {
        "layer2": ["layer3.0.attn", "layer3.1.attn"],
        "layer3": ["layer4.0.attn", "layer4.1.attn"],
    }
    assert set(rec["routes"].values()) == {"graph"} and len(rec["routes"]) == 4


def test_a_finished_run_keeps_no_optimizer_state(finished, tmp_path, capsys) -> None:
    run, _ = finished
    assert run_state(run) is RunState.FINISHED
    state = load_checkpoint(run)
    assert "optimizer" not in state and state["epoch"] == 2
    assert {"model", "config", "scheduler", "rng"} <= state.keys()  # no test-chosen "best"
    weights = sum(t.numel() * t.element_size() for t in state["model"].values())
    # the weights once, not twice (SGD's momentum is as large): the file is about half of what
    # a resumable checkpoint takes
    assert (run / "checkpoint.pt").stat().st_size < 1.1 * weights + 100_000
    model = model_from_checkpoint(state, num_classes=100)  # what eval and analyze rebuild
    assert isinstance(model(torch.zeros(1, 3, 32, 32)).logits, torch.Tensor)
    assert main(["eval", str(run / "checkpoint.pt"), "--synthetic"]) == 0
    assert "top1" in capsys.readouterr().out


def test_keep_optimizer_and_extending_a_finished_run(finished, tmp_path) -> None:
    run, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)  # files and the tensorboard/ folder
    lines: list[str] = []
    data = synthetic_cifar100(n_train=128, n_test=32)
    # extended with the steps it was trained with ([0.5] of 2 = after epoch 1; of 3 they'd move)
    optim = {"epochs": 3, "milestones": [1]}
    cfg = _cfg(model={"aux_at": "auto"}, optim=optim, system={"keep_optimizer": True})
    with condattn_log(lines.append):
        loop.train(cfg, data=data, run_dir=copy, resume=True)
    assert any("momentum restarts from zero" in line for line in lines)
    state = load_checkpoint(copy)
    assert state["epoch"] == 3 and "optimizer" in state  # keep_optimizer: everything stays


def test_init_from_reads_a_finished_plain_run(tmp_path) -> None:
    run = tmp_path / "se"
    cfg = _cfg(model={"variant": "se"}, optim={"epochs": 1, "milestones": []})
    loop.train(cfg, data=synthetic_cifar100(n_train=64, n_test=32), run_dir=run)
    assert "optimizer" not in load_checkpoint(run)
    weights, source = read_init_weights(run)
    assert "fc.weight" in weights and "epoch 1" in source


def test_heads_line_counts_in_place_routes_and_se_a() -> None:
    net = create_model("se_resnet18", num_classes=10, widths=(8, 8, 16, 16))
    se_a = condattn.convert(net, aux_at=["layer2"], conditioned=False)
    assert heads_line(se_a) == "aux heads: layer2 (SE-A: T feeds no attention)"
    inplace = condattn.convert(net, aux_at=["layer3"], leaf_modules=["layer4.0"])
    assert heads_line(inplace) == "aux heads: layer3 -> layer4.* (2 SE, 1 in place)"
    assert heads_line(net) is None


def test_schedule_line_says_what_a_short_run_leaves_out() -> None:
    o = OptimConfig(epochs=2, milestones=(0.3, 0.6, 0.8), warmup_epochs=0)
    assert schedule_line(o) == (
        "lr 0.1, x0.2 after epochs 1 (optim.milestones [0.3, 0.6, 0.8] of 2; 2 past the end of "
        "this short run, left out)"
    )
    assert "no decay" in schedule_line(OptimConfig(epochs=2, milestones=()))


def test_small_inputs_are_named_with_the_size_that_works() -> None:
    pytest.importorskip("timm")
    cfg = _cfg(model={"arch": "timm:ecaresnet26t", "widths": [], "aux_at": "auto"})
    heads = ["layer2", "layer3"]
    msg = size_warning(cfg, num_classes=100, image_size=(32, 32), heads=heads)
    assert msg is not None and "\n" not in msg
    assert "32x32 inputs are small for timm:ecaresnet26t: layer3 2x2 is smaller than" in msg
    assert "the last stage, layer4, is 1x1" in msg and "the aux head at layer3" in msg
    assert "at least 64 px (data.image_size)" in msg and "model.aux_head.pool_size=2" in msg
    assert size_warning(cfg, num_classes=100, image_size=(64, 64), heads=heads) is None
    zoo = _cfg()
    assert size_warning(zoo, num_classes=100, image_size=(32, 32), heads=heads) is None
    tiny = size_warning(zoo, num_classes=100, image_size=(8, 8), heads=heads)
    assert tiny is not None and "layer3 2x2 is smaller than the aux heads' 4x4 pool" in tiny
    smaller_pool = _cfg(model={"aux_head": {"pool_size": 2}})
    assert size_warning(smaller_pool, num_classes=100, image_size=(8, 8), heads=heads) is None
