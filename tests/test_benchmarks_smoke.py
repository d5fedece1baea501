"""Each benchmark script's main() runs on its --smoke config and writes JSON + markdown."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_modules():
    import torch

    threads = torch.get_num_threads()  # the smoke configs set 1 thread; give it back afterwards
    sys.path.insert(0, str(BENCH))
    try:
        yield {n: importlib.import_module(n) for n in ("params_macs", "throughput", "convert_time")}
    finally:
        sys.path.remove(str(BENCH))
        torch.set_num_threads(threads)


def _check_outputs(out: Path, stem: str) -> dict:
    js, md = out / f"{stem}_cpu.json", out / f"{stem}_cpu.md"
    assert js.is_file() and md.is_file(), f"{stem}: expected {js.name} and {md.name} in {out}"
    payload = json.loads(js.read_text())
    cond = payload["conditions"]
    for key in ("device", "torch", "threads", "hostname", "git_sha"):
        assert key in cond, f"{stem}: conditions lack {key}"
    text = md.read_text()
    assert "Command:" in text and "Conditions:" in text and "|" in text
    return payload


def test_params_macs_smoke(bench_modules, tmp_path):
    assert bench_modules["params_macs"].main(["--smoke", "--out", str(tmp_path)]) == 0
    payload = _check_outputs(tmp_path, "params_macs")
    assert {r["variant"] for r in payload["se"]} == {"se", "se_a", "se_r"}
    assert payload["families"], "the second table (other attention blocks) is empty"


def test_params_macs_paper_numbers_are_checked(bench_modules):
    pm = bench_modules["params_macs"]
    assert pm.PAPER[(101, "se_r")] == (57.243, 2.546)
    assert set(pm.VARIANTS) == {"se", "se_a", "se_r"}


def test_throughput_smoke(bench_modules, tmp_path):
    tp = bench_modules["throughput"]
    assert tp.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    payload = _check_outputs(tmp_path, "throughput")
    a = payload["a"]["18"]
    assert {"se_r/se_a", "se_r/se"} <= set(a["train"])
    assert set(a["train"]["timings"]) == {"se", "se_a", "se_r"}
    assert "memory_train" in a
    b = payload["b"]
    assert set(b["train"]["se/plain"]) == {"eager", "channels_last"}
    assert {"paired", "medians", "minima"} <= set(b["train"]["se/plain"]["eager"])
    assert "paired se_r/se" in a["train"]
    assert b["profile_total_ms"]["se"] > 0


def test_convert_time_smoke(bench_modules, tmp_path):
    ct = bench_modules["convert_time"]
    assert ct.main(["--smoke", "--out", str(tmp_path)]) == 0
    payload = _check_outputs(tmp_path, "convert_time")
    (rec,) = payload["models"].values()
    assert rec["median_s"] > 0 and "profile" in rec


def test_interleaved_rotates_and_summarizes(bench_modules):
    import _common as C
    import torch

    calls = []
    res = C.interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        device=torch.device("cpu"),
        warmup=1,
        repeats=3,
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rotating rounds
    assert res["a"]["n"] == 3 and res["a"]["median_s"] >= 0
    assert C.summarize([1.0, 2.0, 3.0, 4.0, 100.0])["median_s"] == 3.0
    assert C.device_slug(torch.device("cpu")) == "cpu"


def _fake_study(root: Path, overrides: list[str], top1: dict[int, float]) -> Path:
    """A compare directory as ``condattn compare`` leaves it: summary, logs, run dirs with a
    checkpoint each."""
    runs = []
    for seed, acc in top1.items():
        d = root / "se_r" / f"seed{seed}"
        d.mkdir(parents=True)
        for f in ("metrics.jsonl", "results.json", "config.json", "checkpoint.pt"):
            (d / f).write_text("{}\n")
        runs.append({"seed": seed, "top1": acc, "run_dir": f"se_r/seed{seed}"})
    (root / "logs").mkdir()
    (root / "logs" / "se_r-seed0.log").write_text("epoch 1/1\n")
    summary = {
        "conditions": {"recipe": "r.toml", "overrides": overrides, "epochs": 1},
        "variants": {"se_r": {"runs": runs}},
        "missing": [],
    }
    (root / "compare.json").write_text(json.dumps(summary))
    (root / "compare.md").write_text("# table\n")
    return root


def _evidence():
    """benchmarks/evidence.py as a module."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("evidence")
    finally:
        sys.path.remove(str(BENCH))


def test_evidence_collect_and_contrast(tmp_path):
    evidence = _evidence()
    a = _fake_study(tmp_path / "a", ["x=1", "p=bf16"], {0: 30.0, 1: 31.0, 2: 29.5})
    b = _fake_study(tmp_path / "b", ["x=1", "p=fp32"], {0: 29.0, 1: 30.5, 2: 29.0})
    out = tmp_path / "evidence"
    dest = evidence.collect(a, "a", out=out)
    assert (dest / "compare.json").is_file() and (dest / "logs" / "se_r-seed0.log").is_file()
    assert (dest / "se_r" / "seed1" / "metrics.jsonl").is_file()
    assert not list(dest.rglob("checkpoint.pt"))  # never the checkpoints
    res = evidence.contrast(a, b, variant="se_r", name="a_vs_b", out=out)
    d = res["a_minus_b"]
    assert d["mean"] == pytest.approx(2.0 / 3) and d["n_pairs"] == 3
    assert d["ci95"][0] < d["mean"] < d["ci95"][1]
    assert res["a"]["differs_by"] == ["p=bf16"] and res["b"]["differs_by"] == ["p=fp32"]
    text = (out / "a_vs_b.md").read_text()
    assert "+0.67 points" in text and "p=bf16" in text
    summary = json.loads((a / "compare.json").read_text())
    summary["missing"] = ["se_r/seed3"]
    (a / "compare.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit, match="unfinished runs"):
        evidence.collect(a, "a", out=out)
    with pytest.raises(SystemExit, match="no variant 'se'"):
        evidence.contrast(a, b, variant="se", name="x", out=out)


def _budget_study(root: Path, epochs: int, overrides: list[str], top1: dict) -> Path:
    """A compare.json with variants ``top1`` (variant -> seed -> top-1) at ``epochs``."""
    from condattn.experiments.stats import paired_difference

    root.mkdir(parents=True)
    conditions = {"recipe": "r.toml", "overrides": overrides, "epochs": epochs, "model": "m"}
    conditions |= {"widths": [8], "num_train": 100, "num_test": 10, "device_name": "cpu"}
    variants = {
        v: {"runs": [{"seed": s, "top1": x} for s, x in by_seed.items()]}
        for v, by_seed in top1.items()
    }
    diffs = [{"a": "se_r", "b": "se", **paired_difference(top1["se_r"], top1["se"])}]
    summary = {"conditions": conditions, "variants": variants, "differences": diffs}
    (root / "compare.json").write_text(json.dumps(summary | {"missing": []}))
    return root


def test_evidence_trend_against_budget(tmp_path):
    evidence = _evidence()
    long = _budget_study(
        tmp_path / "e2",
        2,
        ["optim.epochs=2", "optim.milestones=[1]"],
        {"se": {0: 40.0, 1: 41.0, 2: 42.0}, "se_r": {0: 41.0, 1: 41.5, 2: 43.5}},
    )
    short = _budget_study(
        tmp_path / "e1", 1, [], {"se": {0: 30.0, 1: 31.0}, "se_r": {0: 30.0, 1: 32.0}}
    )
    out = tmp_path / "evidence"
    res = evidence.trend([long, short], name="budget", out=out)
    assert [r["epochs"] for r in res["rows"]] == [1, 2]  # sorted by budget
    se2 = res["rows"][1]["variants"]["se"]
    assert se2["mean"] == pytest.approx(41.0) and se2["n"] == 3
    # Student's interval of the mean: 41 +- t(0.975, 2) * 1 / sqrt(3)
    assert se2["ci95"] == pytest.approx([41.0 - 4.302653 / 3**0.5, 41.0 + 4.302653 / 3**0.5])
    assert res["rows"][1]["differences"][0]["mean"] == pytest.approx(1.0)
    text = (out / "budget.md").read_text()
    assert "| 2 | se_r − se | +1.00 |" in text and "| 1 | se | 2 | 30.50 ± 0.71 |" in text
    assert (out / "budget.png").stat().st_size > 0
    other = _budget_study(
        tmp_path / "x", 2, ["optim.epochs=2", "model.r=4"], {"se": {0: 1.0}, "se_r": {0: 2.0}}
    )
    with pytest.raises(SystemExit, match="more than the budget"):
        evidence.trend([short, other], name="bad", out=out)
    with pytest.raises(SystemExit, match="at least two"):
        evidence.trend([short], name="bad", out=out)


def test_gpu_check_script_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh (the prepared device check) on a tiny model: it trains, prints the
    per-200-epoch extrapolation and writes the throughput table into OUT, not into the repo."""
    import os
    import subprocess

    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "SETS": "model.widths=[8,8,16,16] optim.batch_size=32 system.threads=1",
        "TRAIN": "64",
        "TEST": "32",
        "EPOCHS": "2",
        "MODES": "off",
        "THROUGHPUT_ARGS": "--widths-scale 0.125 --batch 4 --repeats 1 --warmup 1",
    }
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "compile=off: " in proc.stdout and "min per 200-epoch run" in proc.stdout
    assert (tmp_path / "compile_off" / "results.json").is_file()
    assert (tmp_path / "throughput_a_cpu.md").is_file()
