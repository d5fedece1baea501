"""Small things a user meets (issue 23, item 6): ``condattn --version`` without torch,
``compare --help`` with its defaults, compare.png's title, and a full disk while a checkpoint is
written (one line: the folder, the space needed, ``--resume``; the previous checkpoint intact)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import condattn
from condattn.cli import main
from condattn.experiments.plots import plot_title
from condattn.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


def test_version_answers_before_torch_loads(capsys: pytest.CaptureFixture[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, not an installed copy
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "condattn.cli", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"condattn {condattn.__version__} (torch ")
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "condattn._omp_env" in imported and "torch" not in imported
    with pytest.raises(SystemExit):
        main(["--version"])  # in-process (argparse) gives the same line
    assert capsys.readouterr().out == proc.stdout


def test_compare_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: se,se_a,se_r)" in out and "(default: 0,1,2)" in out


def test_plot_title_has_no_cache_path() -> None:
    source = "archive /work/shared/data/cifar-100-python.tar.gz cached extraction in /root/.cache/x"
    c = {"model": "se_resnet18", "data_source": source, "num_train": 50000, "num_test": 10000}
    title = plot_title({**c, "epochs": 15})
    assert title == "se_resnet18: 50000 train / 10000 test images, 15 epochs"


def _disk_full_save(obj: object, f) -> None:
    """torch.save on a full disk: part of the file, then torch's error over ENOSPC."""
    f.write(b"PK\x03\x04partial")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0"
        ) from None


def test_full_disk_keeps_the_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch) -> None:
    path = tmp_path / "run" / "checkpoint.pt"
    state = {"model": {"w": torch.zeros(250_000)}, "epoch": 1}
    ckpt.save_checkpoint(path, state)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _disk_full_save)
    with pytest.raises(ckpt.NoSpaceError) as err:
        ckpt.save_checkpoint(path, {**state, "epoch": 2})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"no space left in {path.parent} to write")
    assert "needs about 1 MB" in msg and "previous checkpoint there is intact" in msg
    assert msg.endswith("continue the run with --resume")
    assert path.read_bytes() == before and sorted(os.listdir(path.parent)) == ["checkpoint.pt"]
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(OSError("EIO")))
    with pytest.raises(OSError, match="EIO"):  # other write errors are not disguised
        ckpt.save_checkpoint(path, state)


def test_full_disk_during_training_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    def full(obj: object, path: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:626]") from OSError(
            errno.ENOSPC, "No space left on device"
        )

    monkeypatch.setattr(ckpt, "atomic_torch_save", full)
    sets = [
        "model.widths=[8, 8, 16, 16]",
        "optim.epochs=1",
        "optim.batch_size=64",
        "data.synthetic_train=128",
        "data.synthetic_test=64",
        "data.train_subset=0",
        "system.threads=1",
        "system.progress=off",
    ]
    argv = ["train", str(REPO / "recipes" / "quick.toml"), "--synthetic", "--out"]
    args = [*argv, str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"condattn train: error: no space left in {tmp_path / 'run'}")
    assert "MB" in err and "--resume" in err


def test_a_closed_pipe_is_not_an_error() -> None:
    """``condattn recipes | head -1``: the reader leaves early; no traceback, exit status 0."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = f"{sys.executable} -m condattn.cli recipes | head -1"
    res = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr
    assert res.stdout.count("\n") == 1
