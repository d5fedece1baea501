"""The SLURM launcher against a real single-node cluster (``bash .ci/slurm_local.sh`` starts one).

Skipped, with the reason, where no cluster answers ``sinfo`` or submitit is missing. The jobs
import the condattn under test: the launcher puts this checkout first on the jobs' PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import TINY_GRID

from condattn.experiments import CompareError, compare
from condattn.experiments.launchers import GridPending, LocalLauncher, make_launcher
from condattn.experiments.launchers import slurm as slurm_mod
from condattn.train.loop import TIMING_FIELDS

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
TINY = TINY_GRID


def _cluster_reason() -> str:
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is missing: pip install 'condattn[slurm]'"
    if shutil.which("sinfo") is None:
        return "no SLURM here (no sinfo); bash .ci/slurm_local.sh starts a single-node cluster"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(s in proc.stdout for s in ("idle", "mix", "alloc")):
        return f"no SLURM node answers sinfo ({proc.stderr.strip() or proc.stdout.strip()})"
    return ""


pytestmark = pytest.mark.skipif(bool(_cluster_reason()), reason=_cluster_reason() or "-")


@pytest.fixture(autouse=True)
def _fast_poll(monkeypatch) -> None:
    monkeypatch.setattr(slurm_mod, "POLL_S", 1.0)


def _slurm(**options) -> slurm_mod.SlurmLauncher:
    return make_launcher("slurm", cpus_per_run=1, time=10, **options)


def _numbers(summary: dict) -> dict:
    return {v: (s["mean"], s["runs"]) for v, s in summary["variants"].items()}


def _compare(out: Path, launcher, *, seeds=(0, 1), variants=("se", "se_a"), sets=()) -> dict:
    return compare(
        QUICK,
        variants=variants,
        seeds=seeds,
        out_dir=out,
        overrides=[*TINY, "optim.epochs=1", *sets],
        synthetic=True,
        launcher=launcher,
    )


def test_grid_under_slurm_matches_local_no_wait_then_collect(tmp_path: Path) -> None:
    """The acceptance grid cut down: 2 variants x 2 seeds, deterministic, submitted with
    --no-wait, then the same call again collects the same numbers as the local launcher."""
    with pytest.raises(GridPending, match=r"queued|running") as info:
        _compare(tmp_path / "slurm", _slurm(wait=False))
    assert len(info.value.statuses) == 4
    jobs = json.loads((tmp_path / "slurm" / "slurm" / "jobs.json").read_text())
    assert len({j.split("_")[0] for j in jobs.values()}) == 1  # one array job, 4 tasks
    on_slurm = _compare(tmp_path / "slurm", _slurm())  # the same command again: waits, collects
    local = _compare(tmp_path / "local", LocalLauncher(jobs=1))
    assert _numbers(on_slurm) == _numbers(local)
    for v in ("se", "se_a"):
        env = json.loads((tmp_path / "slurm" / v / "seed0" / "environment.json").read_text())
        assert "submitit" in " ".join(env["starts"][-1]["argv"])  # trained in a SLURM task


@pytest.mark.slow  # a 3-epoch run twice, one interrupted and requeued: ~1-2 min
def test_a_run_signalled_by_slurm_is_requeued_and_finishes_identically(tmp_path: Path) -> None:
    sets = ["optim.epochs=3"]
    launcher = _slurm(wait=False)
    with pytest.raises(GridPending):
        _compare(tmp_path / "s", launcher, seeds=(0,), variants=("se",), sets=sets)
    run = tmp_path / "s" / "se" / "seed0"
    (job,) = json.loads((tmp_path / "s" / "slurm" / "jobs.json").read_text()).values()
    deadline = time.monotonic() + 180
    while not (run / "checkpoint.pt").is_file():  # epoch 1 done: interrupt it mid-run
        assert time.monotonic() < deadline
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what preemption sends
    _compare(tmp_path / "s", _slurm(), seeds=(0,), variants=("se",), sets=sets)
    starts = json.loads((run / "environment.json").read_text())["starts"]
    assert len(starts) == 2 and starts[1]["resumed"] and starts[1]["start_epoch"] > 1
    ref = tmp_path / "ref"
    _compare(ref, LocalLauncher(jobs=1), seeds=(0,), variants=("se",), sets=sets)
    rows = [_strip(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want = [_strip(line) for line in (ref / "se/seed0/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows == want


def _strip(line: str) -> dict:
    return {k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}


@pytest.mark.slow  # one SLURM task that fails at once: ~15 s
def test_a_failed_run_names_its_slurm_log(tmp_path: Path) -> None:
    with pytest.raises(CompareError) as info:
        compare(
            QUICK,
            variants=("se",),
            seeds=(0,),
            out_dir=tmp_path,
            overrides=[*TINY, "optim.epochs=1", "model.kwargs={bogus = 1}"],  # fails in the task
            synthetic=True,
            launcher=_slurm(),
        )
    msg = str(info.value)
    assert "run se/seed0 failed in SLURM job" in msg and "bogus" in msg
    log = Path(msg.split("(log: ")[1].split(")")[0])
    assert log.is_file() and log.parent == tmp_path / "slurm"


@pytest.mark.slow  # 2 gloo tasks under SLURM and 2 under torchrun: ~1 min
def test_two_task_ddp_under_slurm_matches_torchrun(tmp_path: Path) -> None:
    sets = ["optim.epochs=1", "data.train_subset=0"]
    _compare(tmp_path / "s", _slurm(tasks_per_run=2), seeds=(0,), variants=("se",), sets=sets)
    run = tmp_path / "s" / "se" / "seed0"
    assert json.loads((run / "results.json").read_text())["world_size"] == 2
    cmd = ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "condattn.cli", "train", QUICK, "--synthetic", "--out", str(tmp_path / "t")]
    own = ["system.progress=off", "model.variant=se", "system.seed=0"]
    cmd += [a for s in [*TINY, *sets, *own] for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    got = [_strip(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want = [_strip(line) for line in (tmp_path / "t/metrics.jsonl").read_text().splitlines()]
    assert got == want
