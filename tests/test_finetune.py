"""Fine-tuning (``model.init_from``): a converted run starts from a plain model's trained
weights and, with ``cond_init = "zeros"``, computes exactly what that model did at step 0."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import condattn_log

from condattn.data import synthetic_cifar100
from condattn.train import loop
from condattn.train.build import as_output, build_model
from condattn.train.checkpoint import (
    CheckpointError,
    apply_init_weights,
    load_checkpoint,
    model_from_checkpoint,
    read_init_weights,
)
from condattn.train.config import TrainConfig
from condattn.train.recipe import config_from_dict

QUIET: dict = {}


def _cfg(variant: str, *, widths=(8, 16, 32, 64), **model: object) -> TrainConfig:
    return config_from_dict(
        {
            "model": {"arch": "se_resnet18", "variant": variant, "widths": list(widths), **model},
            "loss": {"aux_weights": [0.3, 0.3]},
            "optim": {"epochs": 1, "batch_size": 32, "milestones": []},
            "system": {"threads": 1, "progress": "off"},
        }
    )


@pytest.fixture(scope="module")
def data():
    return synthetic_cifar100(n_train=64, n_test=32)


@pytest.fixture(scope="module")
def se_run(tmp_path_factory, data) -> Path:
    run = tmp_path_factory.mktemp("se") / "run"
    loop.train(_cfg("se"), data=data, run_dir=run, **QUIET)
    return run


@pytest.mark.parametrize("variant", ["se_a", "se_r"])
def test_converted_start_computes_the_plain_models_function(se_run, data, variant):
    plain = model_from_checkpoint(load_checkpoint(se_run), num_classes=100)
    cfg = _cfg(variant, init_from=str(se_run), cond_init="zeros")
    sd, source = read_init_weights(cfg.model.init_from)
    assert "epoch 1" in source
    torch.manual_seed(0)
    net = build_model(cfg, num_classes=100)
    x = data.test_images[:8].float() / 255
    apply_init_weights(net, sd, variant=variant, source=source)
    net.eval()
    with torch.no_grad():
        got, want = as_output(net(x)).logits, plain(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    fresh = build_model(cfg, num_classes=100).eval()  # without the weights: another function
    with torch.no_grad():
        assert not torch.allclose(as_output(fresh(x)).logits, want, atol=1e-3)


def test_fine_tune_run_logs_its_source_and_resumes_without_it(se_run, data, tmp_path):
    copy = tmp_path / "se.pt"
    torch.save(model_from_checkpoint(load_checkpoint(se_run), num_classes=100).state_dict(), copy)
    cfg = _cfg("se_r", init_from=str(copy), cond_init="zeros")
    lines: list[str] = []
    run = tmp_path / "ft"
    with condattn_log(lines.append):
        loop.train(cfg, data=data, run_dir=run)
    assert any(line == f"weights from {copy}" for line in lines)
    copy.unlink()  # a resumed run has its own weights: the source is not read again
    more = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=2))
    loop.train(more, data=data, run_dir=run, resume=True, **QUIET)
    assert load_checkpoint(run)["epoch"] == 2


def test_init_from_errors_say_what_to_give(se_run, data, tmp_path):
    with pytest.raises(CheckpointError, match=r"model.init_from: no file at .*variant 'se'"):
        read_init_weights(tmp_path / "missing.pt")
    ser = tmp_path / "ser"
    loop.train(_cfg("se_r"), data=data, run_dir=ser, **QUIET)
    with pytest.raises(CheckpointError, match=r"variant 'se_r' run; fine-tuning starts from"):
        read_init_weights(ser)
    odd = tmp_path / "odd.pt"
    torch.save([1, 2, 3], odd)
    with pytest.raises(CheckpointError, match="neither a condattn run checkpoint nor"):
        read_init_weights(odd)
    sd, source = read_init_weights(se_run / "checkpoint.pt")
    wider = build_model(_cfg("se_r", widths=(16, 32, 64, 128)), num_classes=100)
    with pytest.raises(CheckpointError, match=r"does not fit this run's model\.arch"):
        apply_init_weights(wider, sd, variant="se_r", source=source)


def test_cli_reports_a_bad_init_from_in_one_line(tmp_path, capsys):
    from condattn.cli import main

    rc = main(
        [
            "train",
            str(Path(__file__).resolve().parents[1] / "recipes" / "quick.toml"),
            "--synthetic",
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"model.init_from={tmp_path / 'nope.pt'}",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "model.init_from: no file at" in err and "Traceback" not in err
