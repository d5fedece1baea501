"""torchrun with 2 gloo processes on the CPU: rank 0 alone writes; metrics match 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import RUN_FILES

from condattn.data import write_synthetic_cifar100

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
SETS = [
    "model.widths=[8, 16, 32, 64]",
    "optim.batch_size=64",  # the GLOBAL batch: 32 per rank
    "optim.epochs=2",
    "optim.milestones=[1]",
    "data.train_subset=0",
    "system.threads=1",
    "system.progress=off",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data: Path, out: Path) -> list[str]:
    sets = [a for s in SETS for a in ("--set", s)]
    return ["train", QUICK, "--data", str(data), "--out", str(out), *sets]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo torchrun test is POSIX-only")
def test_two_rank_gloo_matches_one_rank(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_cifar100(data, n_train=512, n_test=200)
    cwd1, cwd2 = tmp_path / "cwd1", tmp_path / "cwd2"
    cwd1.mkdir()
    cwd2.mkdir()
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # the code under test
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "condattn.cli",
    ]
    ddp = subprocess.Popen(
        [*torchrun, *_train_args(data, two)],
        cwd=cwd2,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    single = subprocess.run(
        [sys.executable, "-m", "condattn.cli", *_train_args(data, one)],
        cwd=cwd1,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out, _ = ddp.communicate(timeout=240)
    assert single.returncode == 0, single.stderr
    assert ddp.returncode == 0, out

    # only rank 0 wrote: the run dir holds each file once, nothing appeared elsewhere
    assert {p.name for p in two.iterdir()} == RUN_FILES
    assert list(cwd2.iterdir()) == []
    assert out.count("final (reported) test top1") == 1
    assert out.count("data: ") == 1
    env2 = json.loads((two / "environment.json").read_text())["starts"]
    assert len(env2) == 1 and env2[0]["world_size"] == 2

    r1, r2 = _rows(one), _rows(two)
    assert [r["epoch"] for r in r2] == [1, 2]
    # Same samples, augmentations and lr; only BN statistics (per rank, 32 vs 64 samples) differ.
    for a, b in zip(r1, r2):
        assert a["lr"] == b["lr"]
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
        assert abs(b["train_top1"] - a["train_top1"]) <= 5.0
        assert abs(b["test_top1"] - a["test_top1"]) <= 8.0
    res = json.loads((two / "results.json").read_text())
    assert res["world_size"] == 2 and res["num_test"] == 200
    assert res["final"]["top1"] == r2[-1]["test_top1"]
