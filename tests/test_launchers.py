"""Launchers without a cluster: GPU slots, the run-directory lock, kill -9 of a compare, TensorBoard
event files, and the array job a SLURM launcher would submit (dry run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_GRID, set_args

from condattn.cli import main
from condattn.experiments.launchers import LocalLauncher, plan_slots
from condattn.experiments.launchers.local import Slot
from condattn.train.lock import RunLock, RunLockedError, holder, is_locked

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
TINY = TINY_GRID


_sets = set_args


def _env() -> dict[str, str]:
    """Subprocesses import the condattn under test (this checkout), not another install."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# --- GPU assignment ---------------------------------------------------------------------------


def test_cpu_only_shares_cores_as_before() -> None:
    slots = plan_slots(jobs=2, gpus_per_run=0, runs_per_gpu=1, devices=[], cores=8)
    assert slots == [Slot((), 4), Slot((), 4)]
    assert LocalLauncher(jobs=1, devices=[]).in_process  # one job, no GPU: in this process


def test_one_gpu_per_run_round_robin_over_visible_devices() -> None:
    slots = plan_slots(jobs=None, gpus_per_run=1, runs_per_gpu=1, devices=list("0123"), cores=16)
    assert [s.gpus for s in slots] == [("0",), ("1",), ("2",), ("3",)]
    assert {s.threads for s in slots} == {4}
    assert slots[2].env(hide_gpus=False) == {"CUDA_VISIBLE_DEVICES": "2"}


def test_runs_per_gpu_packs_and_spreads_first() -> None:
    slots = plan_slots(jobs=None, gpus_per_run=1, runs_per_gpu=3, devices=["4", "7"], cores=12)
    assert [s.gpus for s in slots] == [("4",), ("7",)] * 3  # first runs on different GPUs
    capped = plan_slots(jobs=3, gpus_per_run=1, runs_per_gpu=3, devices=["4", "7"], cores=12)
    assert [s.gpus for s in capped] == [("4",), ("7",), ("4",)]


def test_several_gpus_per_run_and_impossible_requests() -> None:
    slots = plan_slots(jobs=None, gpus_per_run=2, runs_per_gpu=1, devices=list("01234"), cores=8)
    assert [s.gpus for s in slots] == [("0", "1"), ("2", "3")]  # GPU 4 left over
    with pytest.raises(ValueError, match="--gpus-per-run 2 but 1 GPU"):
        plan_slots(jobs=None, gpus_per_run=2, runs_per_gpu=1, devices=["0"], cores=8)
    with pytest.raises(ValueError, match="with --gpus-per-run 1"):
        plan_slots(jobs=None, gpus_per_run=2, runs_per_gpu=2, devices=list("0123"), cores=8)
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        plan_slots(jobs=0, gpus_per_run=0, runs_per_gpu=1, devices=[], cores=8)


def test_cuda_visible_devices_is_what_is_handed_out(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    launcher = LocalLauncher(jobs=None, gpus_per_run=1)
    assert [s.gpus for s in launcher.slots] == [("3",), ("5",)]
    assert not launcher.in_process


# --- the lock ---------------------------------------------------------------------------------


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    code = (
        "import sys, time; from condattn.train.lock import RunLock; "
        f"l = RunLock({str(run_dir)!r}); l.acquire(); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_is_exclusive_and_dies_with_its_process(tmp_path: Path) -> None:
    proc = _hold_lock(tmp_path)
    try:
        assert is_locked(tmp_path) and holder(tmp_path)["pid"] == proc.pid
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs, the kernel releases the flock
        proc.wait()
    assert not is_locked(tmp_path)
    with RunLock(tmp_path):
        assert is_locked(tmp_path)  # another open file description sees it held


def test_second_train_resume_on_a_live_run_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", QUICK, "--synthetic", "--out", str(out), *_sets([*TINY, "optim.epochs=1"])]
    assert main(argv) == 0
    (out / "results.json").unlink()  # as if killed after its checkpoint
    proc = _hold_lock(out)  # the live trainer of the run
    try:
        assert main([*argv, "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"is being trained by pid {proc.pid}" in err and "wait for it" in err
        assert main([*argv, "--overwrite"]) == 2  # nor deleted under its feet
    finally:
        proc.kill()
        proc.wait()
    assert main([*argv, "--resume"]) == 0


@pytest.mark.slow  # two compares, each starting two children that import torch: ~60-110 s
def test_kill_9_of_compare_never_trains_a_run_twice(tmp_path: Path) -> None:
    """The user's scenario: kill -9 a running compare, run the same command again."""
    out = tmp_path / "cmp"
    argv = [sys.executable, "-m", "condattn.cli", "compare", QUICK, "--synthetic", "--out"]
    argv += [str(out), "--variants", "se,se_a", "--seeds", "0", "--jobs", "2"]
    argv += _sets([*TINY, "optim.epochs=3"])
    first = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, cwd=tmp_path)
    runs = [out / "se" / "seed0", out / "se_a" / "seed0"]
    deadline = time.monotonic() + 120
    while not all((r / "checkpoint.pt").is_file() for r in runs):  # both mid-training
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.2)
    children = [holder(r)["pid"] for r in runs]
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = subprocess.run(
        argv, env=_env(), capture_output=True, text=True, cwd=tmp_path, timeout=180
    )
    assert second.returncode == 0, second.stdout + second.stderr
    for pid in children:  # the killed compare took its children with it
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text()
    for r in runs:
        rows = [json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == [1, 2, 3]  # each epoch once, in order
        starts = json.loads((r / "environment.json").read_text())["starts"]
        assert all(s["start_epoch"] > 1 for s in starts[1:])  # later starts resumed, never redid
    _check_tensorboard(runs[0], epochs=3)


def _check_tensorboard(run_dir: Path, *, epochs: int) -> None:
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "top1/test", "top5/test", "lr", "img_per_s"} <= tags
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [(e.step, e.value) for e in acc.Scalars("top1/test")]
    assert steps == [(r["epoch"], pytest.approx(r["test_top1"])) for r in rows][:epochs]


# --- dry runs ----------------------------------------------------------------------------------


def test_local_compare_dry_run_shows_each_runs_state_and_trains_nothing(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "o"
    argv = ["compare", QUICK, "--synthetic", "--variants", "se,se_r", "--seeds", "0,1"]
    argv += ["--out", str(out), "--dry-run", *_sets(TINY)]
    # a finished run of this grid is reused: fake one from the asked config
    from condattn.experiments.grid import plan_grid

    done = plan_grid(QUICK, variants=["se"], seeds=[1], overrides=TINY, out_dir=out, threads=1)[0]
    done.run_dir.mkdir(parents=True)
    (done.run_dir / "config.json").write_text(json.dumps(done.cfg.to_dict()))
    (done.run_dir / "results.json").write_text("{}")
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "dry run: 4 run(s) under the local launcher: 1 done (reused), 0 to resume, 3 to train"
    )
    assert sorted(line.split()[0] for line in lines[1:]) == ["reuse", "train", "train", "train"]
    assert f"  reuse   se/seed1 -> {done.run_dir}" in lines
    assert sorted(p.name for p in out.iterdir()) == ["se"]  # nothing trained or created
    # a directory of another config is refused by the dry run as by the real one
    cfg = json.loads((done.run_dir / "config.json").read_text())
    cfg["optim"]["lr"] = 0.5
    (done.run_dir / "config.json").write_text(json.dumps(cfg))
    assert main(argv) == 2
    assert "holds a run of another config than the grid asks (optim.lr" in capsys.readouterr().err


# --- SLURM dry run (no cluster needed) --------------------------------------------------------


def test_table_dry_run_prints_the_array_job(tmp_path: Path, capsys) -> None:
    pytest.importorskip("submitit", reason="--launcher slurm needs the slurm extra (submitit)")
    argv = ["table", "3", "--seeds", "1", "--launcher", "slurm", "--dry-run"]
    assert main([*argv, "--out", str(tmp_path), "--time", "2:00:00", "--partition", "gpu"]) == 0
    out = capsys.readouterr().out
    n = out.count(" -> ")
    assert n >= 2 and f"#SBATCH --array=0-{n - 1}%{n}" in out
    assert "#SBATCH --time=120" in out and "#SBATCH --partition=gpu" in out
    assert "submitit.core._submit" in out and not any(tmp_path.glob("*/seed0"))


def test_local_only_and_slurm_only_flags_are_refused(tmp_path: Path, capsys) -> None:
    argv = ["compare", QUICK, "--synthetic", "--out", str(tmp_path), "--partition", "gpu"]
    assert main(argv) == 2
    assert "--partition only apply to --launcher slurm" in capsys.readouterr().err


def test_recipe_launcher_table_gives_the_resources_and_flags_win(tmp_path: Path, capsys) -> None:
    pytest.importorskip("submitit", reason="--launcher slurm needs the slurm extra (submitit)")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'base = "{QUICK}"\n\n[launcher.slurm]\npartition = "gpu"\ntime = "0:30:00"\n'
        'qos = "low"\nextra = ["--constraint=a100"]\n'
    )
    argv = ["compare", str(recipe), "--synthetic", "--variants", "se", "--seeds", "0,1"]
    argv += ["--out", str(tmp_path / "o"), "--launcher", "slurm", "--dry-run", "--qos", "high"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --time=30" in out
    assert "#SBATCH --qos=high" in out and "#SBATCH --constraint=a100" in out
    assert "#SBATCH --array=0-1%2" in out
