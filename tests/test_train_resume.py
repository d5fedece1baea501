"""Kill -9 mid-epoch, resume: the trajectory is bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from condattn.data import write_synthetic_cifar100
from condattn.train.checkpoint import load_checkpoint
from condattn.train.loop import TIMING_FIELDS

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
# SE-R when convert is available: the aux heads' dropout makes the torch RNG matter.
SETS = [
    "model.widths=[8, 16, 32, 64]",
    "optim.batch_size=32",
    "optim.epochs=2",
    "optim.milestones=[1]",
    "data.train_subset=0",
    "system.threads=1",
    "system.deterministic=true",
    "system.keep_optimizer=true",  # a finished run keeps its momentum: compared below
    "system.progress=off",
]


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for s in SETS for a in ("--set", s)]
    return [
        sys.executable,
        "-m",
        "condattn.cli",
        "train",
        QUICK,
        "--data",
        str(data),
        "--out",
        str(out),
        *sets,
        *extra,
    ]


def _wait_for(cond, *, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc={proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def test_kill_and_resume_is_bit_identical(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_cifar100(data, n_train=320, n_test=100)
    full, killed = tmp_path / "full", tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Both runs go at once (one thread each): the uninterrupted reference and the victim.
    ref = subprocess.Popen(
        _cmd(data, full), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    victim = subprocess.Popen(
        _cmd(data, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = killed / "checkpoint.pt"
    _wait_for(ckpt.exists, proc=victim, timeout=120, what="the first epoch's checkpoint")
    time.sleep(0.3)  # into epoch 1 (10 steps of >= 0.1 s), far from its end
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert load_checkpoint(ckpt)["epoch"] == 1, "killed too late: epoch 2 had already finished"
    assert not (killed / "results.json").exists()

    resumed = subprocess.run(
        _cmd(data, killed, "--resume"), env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(timeout=120) == 0, ref.stderr.read().decode()

    assert _rows(killed) == _rows(full)
    a, b = load_checkpoint(full), load_checkpoint(killed)
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights differ at {k}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ra = json.loads((full / "results.json").read_text())
    rb = json.loads((killed / "results.json").read_text())
    assert ra["final"] == rb["final"] and ra["val_chosen"] == rb["val_chosen"]
    starts = json.loads((killed / "environment.json").read_text())["starts"]
    assert [s["start_epoch"] for s in starts] == [1, 2]
