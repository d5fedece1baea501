"""The ``condattn`` CLI end to end on a synthetic CIFAR-100 written in the official layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import RUN_FILES

import condattn
from condattn.cli import COMMANDS, main
from condattn.data import write_synthetic_cifar100

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
# A tiny SE-ResNet18 and a few hundred images: about a second per epoch on 2 CPU cores.
TINY = [
    "model.widths=[8, 16, 32, 64]",
    "optim.batch_size=64",
    "optim.epochs=2",
    "optim.milestones=[1]",
    "data.train_subset=0",
    "system.threads=1",  # 2 threads on 2 shared cores can be far slower than 1
    "system.progress=off",
]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar100(root, n_train=512, n_test=200)
    return root


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 0 and img.shape[1] > 0


@pytest.mark.parametrize(
    "variant",
    [
        "se",
        "se_r",
    ],
)
def test_train_writes_a_complete_run(variant: str, data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", QUICK, "--data", str(data_dir), "--out", str(out)]
    rc = main([*argv, *_sets([*TINY, f"model.variant={variant}"])])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"data: folder {data_dir.resolve()}" in printed
    assert {p.name for p in out.iterdir()} == RUN_FILES
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # 1-based, as the console
    assert rows[1]["loss"] < rows[0]["loss"]  # it learns
    for key in (
        "loss",
        "main_loss",
        "aux_losses",
        "lr",
        "train_top1",
        "train_top5",
        "test_top1",
        "test_top5",
        "epoch_time_s",
        "img_per_s",
    ):
        assert key in rows[0], key
    assert len(rows[0]["aux_losses"]) == (0 if variant == "se" else 2)
    assert rows[0]["lr"] < 0.1 and rows[0]["lr_last"] == pytest.approx(0.1)  # warm-up
    assert rows[1]["lr"] == pytest.approx(0.02)  # milestone 1: /5
    res = json.loads((out / "results.json").read_text())
    assert res["reported"] == "final" and res["final"]["epoch"] == 2
    assert res["final"]["top1"] == rows[-1]["test_top1"]
    assert res["best"]["top1"] == max(r["test_top1"] for r in rows)
    assert res["data_source"].startswith("folder")
    env = json.loads((out / "environment.json").read_text())["starts"][0]
    for key in ("device", "torch", "git_sha", "threads", "hostname"):
        assert key in env
    assert env["threads"] == 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["variant"] == variant and cfg["model"]["cond_init"] == "default"
    _assert_png(out / "curves.png")

    # eval on the checkpoint reproduces the last epoch's test numbers
    assert main(["eval", str(out / "checkpoint.pt"), "--data", str(data_dir)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_top1"] == pytest.approx(rows[-1]["test_top1"])

    # report: a table plus a comparison plot
    plot = tmp_path / "cmp.png"
    assert main(["report", str(out), str(out), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "| final top-1 |" in table and variant in table
    _assert_png(plot)

    # a second train into the same directory is refused unless --resume/--overwrite
    assert main([*argv, *_sets(TINY)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_console_script_smoke(data_dir: Path, tmp_path: Path) -> None:
    exe = shutil.which("condattn")
    cmd = [exe] if exe else [sys.executable, "-m", "condattn.cli"]
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *cmd,
            "train",
            QUICK,
            "--data",
            str(data_dir),
            "--out",
            str(out),
            *_sets([*TINY, "model.variant=se", "optim.epochs=1", "system.threads=1"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "final (reported) test top1" in proc.stdout
    assert (out / "results.json").is_file()
    assert "\r" not in proc.stdout and "it/s" not in proc.stderr  # no progress bars off a TTY


def test_user_errors_are_clear(tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    assert main(["train", "table3/se_r_resnet500"]) == 2
    assert "table3/se_r_resnet50.toml" in capsys.readouterr().err  # the valid recipes are listed
    assert main(["train", QUICK, "--set", "optim.lrr=1"]) == 2
    assert "valid keys in [optim]" in capsys.readouterr().err
    assert main(["train", QUICK, "--set", "model.variant=sr"]) == 2
    assert "choose one of" in capsys.readouterr().err
    # no data anywhere: the message says where to put it and that --download needs internet
    monkeypatch.setattr("condattn.data.datasets.find_cifar", lambda spec: None)
    assert main(["train", QUICK, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cifar-100-python.tar.gz" in err and "--download" in err and "internet" in err
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert set(COMMANDS) >= {"train", "eval", "report", "profile"}


def test_train_by_short_recipe_name_on_synthetic(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    sets = _sets(
        [
            *TINY,
            "model.variant=se",
            "optim.epochs=1",
            "data.synthetic_train=128",
            "data.synthetic_test=64",
        ]
    )
    assert main(["train", "quick", "--synthetic", *sets]) == 0
    assert "data: synthetic" in capsys.readouterr().out
    assert (tmp_path / "runs" / "quick" / "results.json").is_file()


def test_profile(capsys) -> None:
    assert main(["profile", "se_resnet18", "--rules", "paper"]) == 0
    out = capsys.readouterr().out
    n = condattn.count_params(condattn.models.create_model("se_resnet18", num_classes=100))
    assert f"params {n / 1e6:.3f}M" in out and "MACs" in out
    assert main(["profile", "se_resnet18", "--rules", "nope"]) == 2
    assert "paper, thop, flop_counter" in capsys.readouterr().err
    assert main(["profile", "se_resnet18", "--variant", "se_q"]) == 2


def test_profile_se_r_adds_heads(capsys) -> None:
    assert main(["profile", "se_resnet18", "--variant", "se_r"]) == 0
    se_r = capsys.readouterr().out
    main(["profile", "se_resnet18", "--variant", "se"])
    se = capsys.readouterr().out

    def params(s: str) -> float:
        return float(s.split("params ")[1].split("M")[0])

    assert params(se_r) > params(se)
    torch.manual_seed(0)


def test_profile_cond_rank_for_many_classes(capsys) -> None:
    """Issue 20: the parameter cost of T for 1000 classes, whole and projected to k = 64."""
    counts = {}
    for variant, rank in (("se_a", 0), ("se_r", 0), ("se_r", 64)):
        argv = ["profile", "se_resnet50", "--variant", variant, "--num-classes", "1000"]
        assert main([*argv, "--cond-rank", str(rank)]) == 0
        out = capsys.readouterr().out
        assert "n=1000" in out and (f"cond_rank={rank}" in out) == bool(rank)
        counts[variant, rank] = round(float(out.split("params ")[1].split("M")[0]) * 1e3)
    se_a, full, low = counts["se_a", 0], counts["se_r", 0], counts["se_r", 64]
    assert se_a < low < full  # thousands of parameters: 37066 < 37293 < 38602 for SE-ResNet50
    assert (full - se_a) > 4 * (low - se_a)
    assert main(["profile", "se_resnet18", "--variant", "se_r", "--cond-rank", "-1"]) == 2


def test_bf16_and_channels_last_run(tmp_path: Path, capsys) -> None:
    sets = _sets(
        [
            *TINY,
            "model.variant=se",
            "optim.epochs=1",
            "data.synthetic_train=128",
            "data.synthetic_test=64",
            "system.precision=bf16",
            "system.channels_last=on",
        ]
    )
    assert main(["train", QUICK, "--synthetic", "--out", str(tmp_path / "r"), *sets]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert 0.0 <= res["final"]["top1"] <= 100.0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["system"]["precision"], cfg["system"]["channels_last"]) == ("bf16", "on")
    speed = json.loads((tmp_path / "r" / "environment.json").read_text())["starts"][0]["speed"]
    assert speed["precision"] == "bf16" and speed["channels_last"] is True
