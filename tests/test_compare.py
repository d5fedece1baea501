"""``condattn compare``: the grid over train(), reuse and resume, the statistics and the summary."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
from helpers import RUN_FILES, condattn_log
from scipy import stats

import condattn.train
from condattn.cli import main
from condattn.experiments import (
    CompareError,
    compare,
    describe,
    paired_difference,
    pairs_for_power,
    parse_seeds,
    parse_variants,
    plan_grid,
    write_summary,
)
from condattn.experiments.grid import _train_in_child, run_state
from condattn.experiments.stats import MOST_PAIRS
from condattn.experiments.summary import QUESTIONS, _sentence

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
# The acceptance command cut down: tiny widths, a few hundred synthetic images, one epoch.
TINY = [
    "model.widths=[8,16,16,32]",
    "data.synthetic_train=256",
    "data.synthetic_test=64",
    "optim.batch_size=64",
    "optim.epochs=1",
    "optim.milestones=[]",
    "system.threads=1",  # 2 threads on 2 shared cores can be far slower than 1
]
VARIANTS = ("se", "se_a", "se_r")
SEEDS = (0, 1)


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _compare_argv(out: Path, sets: list[str] = TINY) -> list[str]:
    argv = ["compare", QUICK, "--variants", ",".join(VARIANTS), "--seeds", "0,1", "--synthetic"]
    return [*argv, "--out", str(out), *_sets(sets)]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-variant x 2-seed comparison (shared: tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert main(_compare_argv(out)) == 0
    return out


@pytest.fixture
def grid_copy(grid_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "cmp"
    shutil.copytree(grid_dir, out)  # copy2: contents and mtimes preserved
    return out


def _mtimes(out: Path) -> dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for p in out.glob("*/seed*/*")
        if p.name in ("checkpoint.pt", "results.json", "metrics.jsonl")
    }


# --- statistics -------------------------------------------------------------------------------


def test_paired_difference_matches_a_hand_computation() -> None:
    a = {0: 70.1, 1: 71.3, 2: 70.8, 3: 69.9}
    b = {0: 69.5, 1: 70.9, 2: 70.0, 3: 69.0}
    res = paired_difference(a, b)
    d = [a[s] - b[s] for s in range(4)]  # 0.6, 0.4, 0.8, 0.9
    mean, sd, n = statistics.mean(d), statistics.stdev(d), len(d)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)  # Student's t-interval, n-1 dof
    assert res["n_pairs"] == 4
    assert res["mean"] == pytest.approx(mean)
    assert res["ci95"] == pytest.approx([mean - half, mean + half])
    t_paired = mean / (sd / math.sqrt(n))
    assert res["p"] == pytest.approx(2 * stats.t.sf(t_paired, n - 1))
    # Welch: unpooled variances, Welch-Satterthwaite degrees of freedom.
    va, vb = statistics.variance(a.values()), statistics.variance(b.values())
    se2 = va / 4 + vb / 4
    dof = se2**2 / ((va / 4) ** 2 / 3 + (vb / 4) ** 2 / 3)
    t_welch = (statistics.mean(a.values()) - statistics.mean(b.values())) / math.sqrt(se2)
    assert res["p_welch"] == pytest.approx(2 * stats.t.sf(abs(t_welch), dof))
    assert res["p"] < res["p_welch"]  # pairing removes the shared seed noise
    assert res["note"] is None


def test_pairs_for_power_matches_the_textbook_sample_sizes() -> None:
    # a paired t-test at alpha 0.05, 80% power: Cohen's d = 0.5 needs 34 pairs, 0.8 needs 15 and
    # 1.0 needs 10 (the published tables, e.g. G*Power's "difference from constant")
    for d, n in ((0.5, 34), (0.8, 15), (1.0, 10)):
        assert pairs_for_power(d * 1.3, 1.3) == n, d
        assert pairs_for_power(-d, 1.0) == n  # the sign does not matter
    assert pairs_for_power(0.0, 1.0) is None and pairs_for_power(1.0, 0.0) is None
    assert pairs_for_power(0.01, 1.0) == MOST_PAIRS + 1  # ~80,000 pairs: past the cap
    res = paired_difference({0: 70.1, 1: 71.3, 2: 70.8}, {0: 69.9, 1: 71.2, 2: 70.0})
    d = [0.2, 0.1, 0.8]
    assert res["pairs_80"] == pairs_for_power(statistics.mean(d), statistics.stdev(d))


def test_describe_and_degenerate_cases_give_none_not_nan() -> None:
    assert describe([71.0, 73.0, 72.5]) == pytest.approx(
        {
            "n": 3,
            "mean": statistics.mean([71.0, 73.0, 72.5]),
            "std": statistics.stdev([71, 73, 72.5]),
        }
    )
    assert describe([70.0]) == {"n": 1, "mean": 70.0, "std": None}
    one = paired_difference({0: 71.0}, {0: 70.0})
    assert (one["mean"], one["ci95"], one["p"], one["p_welch"]) == (1.0, None, None, None)
    assert "at least two" in one["note"]
    same = paired_difference({0: 71.0, 1: 72.0}, {0: 70.0, 1: 71.0})  # d = 1, 1: no spread
    assert same["ci95"] is None and same["p"] is None and "spread" in same["note"]
    # only seeds both variants have are paired
    part = paired_difference({0: 71.0, 1: 72.0, 2: 70.0}, {0: 70.0, 2: 70.5})
    assert part["n_pairs"] == 2 and part["mean"] == pytest.approx((1.0 - 0.5) / 2)
    json.dumps([one, same, part], allow_nan=False)  # JSON-safe


def test_each_difference_gets_a_plain_sentence() -> None:
    base = {"a": "se_r", "b": "se_a", "p": 0.01, "p_welch": 0.02, "n_pairs": 3, "note": None}
    better = _sentence({**base, "mean": 1.2, "ci95": [0.4, 2.0]})
    assert "excludes zero: SE-R beats SE-A by 1.20 points" in better
    worse = _sentence({**base, "mean": -1.2, "ci95": [-2.0, -0.4]})
    assert "excludes zero: SE-R trails SE-A by 1.20 points" in worse
    unsure = _sentence({**base, "mean": 0.3, "ci95": [-0.5, 1.1]})
    assert "includes zero: not measurable at this budget" in unsure
    assert "from a 0.50-point loss to a 1.10-point gain; not evidence of no effect" in unsure
    assert "seed pairs" not in unsure  # no pairs_80 (a compare.json from before it)
    planned = _sentence({**base, "mean": 0.3, "ci95": [-0.5, 1.1], "pairs_80": 12})
    assert "about 12 seed pairs would measure it (80% power; a plan, not a promise" in planned
    tiny = _sentence({**base, "mean": 0.01, "ci95": [-0.5, 0.5], "pairs_80": MOST_PAIRS + 1})
    assert f"more than {MOST_PAIRS} seed pairs" in tiny
    one = paired_difference({0: 71.0}, {0: 70.0})
    lone = _sentence({"a": "se_a", "b": "se", **one})
    assert "over 1 seed(s)" in lone and "at least two" in lone and "--seeds" in lone


def test_one_seed_has_no_spread_and_says_so(grid_copy: Path) -> None:
    summary = write_summary(grid_copy, variants=VARIANTS, seeds=(0,))
    assert all(v["n"] == 1 and v["std"] is None for v in summary["variants"].values())
    assert all(d["ci95"] is None and d["p"] is None for d in summary["differences"])
    md = (grid_copy / "compare.md").read_text()
    assert md.count("(one seed: no std)") == 3
    assert md.count("an interval needs at least two") == 3
    assert json.loads((grid_copy / "compare.json").read_text()) == summary


# --- argument checks --------------------------------------------------------------------------


def test_bad_variants_and_seeds_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert parse_variants(" se_r,se ") == ("se_r", "se")
    assert parse_seeds("0, 2,5") == (0, 2, 5)
    for text in ("se,se_x", "", "se,se"):
        with pytest.raises(CompareError, match="--variants"):
            parse_variants(text)
    for text in ("0,a", "1.5", "", "-1", "1,1"):
        with pytest.raises(CompareError, match="--seeds"):
            parse_seeds(text)
    out = str(tmp_path / "x")
    cases = [
        (["--variants", "se,sr"], "valid: se, se_a, se_r"),
        (["--seeds", "0,one"], "--seeds must be comma-separated non-negative integers"),
        (["--set", "model.variant=se"], "choose it with --variants"),
        (["--set", "seed=3"], "choose it with --seeds"),
        (["--jobs", "0"], "--jobs must be >= 1"),
    ]
    for extra, msg in cases:
        assert main(["compare", QUICK, "--synthetic", "--out", out, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert main(["compare", "no_such_recipe", "--synthetic", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'no_such_recipe'" in err and "table3/se_r_resnet50.toml" in err
    assert not Path(out).exists()  # nothing trained


def test_grid_varies_only_the_variant_and_the_seed(tmp_path: Path) -> None:
    """Same seed, same data order: the loader and the init depend only on system.seed, and the
    grid's configs of one seed differ only in what the variant switches (model, aux losses)."""
    runs = plan_grid(QUICK, variants=VARIANTS, seeds=SEEDS, overrides=TINY, out_dir=tmp_path)
    assert [(r.variant, r.seed) for r in runs] == [(v, s) for s in SEEDS for v in VARIANTS]
    assert [r.run_dir for r in runs] == [tmp_path / v / f"seed{s}" for s in SEEDS for v in VARIANTS]
    for seed in SEEDS:
        cfgs = [r.cfg.to_dict() for r in runs if r.seed == seed]
        assert {c["system"]["seed"] for c in cfgs} == {seed}
        for section in ("optim", "data", "system"):
            assert all(c[section] == cfgs[0][section] for c in cfgs), section
        assert [c["model"]["variant"] for c in cfgs] == list(VARIANTS)
    assert all(r.cfg.system.threads == 1 and r.cfg.system.progress == "off" for r in runs)


# --- the grid end to end -----------------------------------------------------------------------


def test_grid_writes_runs_and_a_summary(grid_dir: Path) -> None:
    assert {p.name for p in grid_dir.iterdir()} >= {"compare.json", "compare.md", "compare.png"}
    for v in VARIANTS:
        for s in SEEDS:
            assert {p.name for p in (grid_dir / v / f"seed{s}").iterdir()} == RUN_FILES
    summary = json.loads((grid_dir / "compare.json").read_text())
    c = summary["conditions"]
    for key in ("model", "data_source", "num_train", "num_test", "epochs", "device", "torch"):
        assert c[key] is not None, key
    assert (c["model"], c["num_train"], c["num_test"], c["epochs"]) == ("se_resnet18", 256, 64, 1)
    assert c["data_source"].startswith("synthetic") and c["threads"] == 1
    assert c["variants"] == list(VARIANTS) and c["seeds"] == list(SEEDS)
    assert "git" in c and c["overrides"] == TINY
    top1 = {}
    for v in VARIANTS:
        entry = summary["variants"][v]
        assert [r["seed"] for r in entry["runs"]] == list(SEEDS)
        for r in entry["runs"]:
            res = json.loads((grid_dir / r["run_dir"] / "results.json").read_text())
            assert (r["top1"], r["top5"]) == (res["final"]["top1"], res["final"]["top5"])
            assert r["val_chosen_top1"] is None and res["variant"] == v  # no val split
        top1[v] = {r["seed"]: r["top1"] for r in entry["runs"]}
        assert entry == {**entry, **describe(list(top1[v].values()))}
    pairs = [(d["a"], d["b"]) for d in summary["differences"]]
    assert pairs == [("se_r", "se_a"), ("se_r", "se"), ("se_a", "se")]
    for d in summary["differences"]:
        assert set(d) >= {"mean", "ci95", "p", "p_welch", "n_pairs"} and d["n_pairs"] == 2
        diff = paired_difference(top1[d["a"]], top1[d["b"]])
        assert d == {"a": d["a"], "b": d["b"], "question": QUESTIONS[d["a"], d["b"]], **diff}
    md = (grid_dir / "compare.md").read_text()
    assert "| variant | top-1 (%) | n |" in md and "| SE-R − SE-A |" in md
    assert sum(line.startswith("- SE") for line in md.splitlines()) == 3  # a sentence each
    png = (grid_dir / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_from_other_machines_are_named_with_their_device(grid_copy: Path, capsys) -> None:
    here = json.loads((grid_copy / "compare.json").read_text())["conditions"]["device_name"]
    # se_a seed 1 was trained elsewhere (a reused run from another machine)
    env_path = grid_copy / "se_a" / "seed1" / "environment.json"
    env = json.loads(env_path.read_text())
    env["starts"][-1]["device_name"] = "Other CPU"
    env_path.write_text(json.dumps(env))
    # ... and read one archive from its own extraction cache: compare still names one dataset
    for path in grid_copy.glob("*/seed*/results.json"):
        res = json.loads(path.read_text())
        cache = "/other/cache" if path.parent == env_path.parent else "/here/cache"
        res["data_source"] = f"archive /data/c100.tar.gz cached extraction in {cache}/cifar"
        path.write_text(json.dumps(res))
    assert main(["report", str(grid_copy)]) == 0
    c = json.loads((grid_copy / "compare.json").read_text())["conditions"]
    assert c["data_source"] == "archive /data/c100.tar.gz"
    assert c["devices"] == {
        here: {"se": [0, 1], "se_a": [0], "se_r": [0, 1]},
        "Other CPU": {"se_a": [1]},
    }
    md = (grid_copy / "compare.md").read_text()
    assert f"({here}: se seed(s) 0, 1, se_a seed(s) 0, se_r seed(s) 0, 1; Other CPU: se_a " in md


def test_second_identical_call_trains_nothing(grid_copy: Path, monkeypatch, capsys) -> None:
    before = _mtimes(grid_copy)
    calls = []
    real = condattn.train.train
    monkeypatch.setattr(condattn.train, "train", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(_compare_argv(grid_copy)) == 0
    assert calls == []
    assert _mtimes(grid_copy) == before and len(before) == 18
    assert "6 done (reused), 0 to resume, 0 to train" in capsys.readouterr().out


def test_run_of_another_config_is_an_error(grid_copy: Path, capsys) -> None:
    before = _mtimes(grid_copy)
    sets = [s for s in TINY if not s.startswith("optim.batch_size")] + ["optim.batch_size=32"]
    assert main(_compare_argv(grid_copy, sets)) == 2
    err = capsys.readouterr().err
    assert str(grid_copy / "se" / "seed0") in err
    assert "optim.batch_size: run has 64, grid asks 32" in err
    assert _mtimes(grid_copy) == before


def test_report_regenerates_a_compare_dir(grid_copy: Path, capsys) -> None:
    conditions = json.loads((grid_copy / "compare.json").read_text())["conditions"]
    for name in ("compare.md", "compare.png"):
        (grid_copy / name).unlink()
    assert main(["report", str(grid_copy)]) == 0
    out = capsys.readouterr().out
    assert "| variant | top-1 (%) | n |" in out and "SE-R − SE-A" in out
    assert (grid_copy / "compare.md").read_text() == out
    assert (grid_copy / "compare.png").is_file()
    again = json.loads((grid_copy / "compare.json").read_text())["conditions"]
    assert {k: again[k] for k in ("recipe", "overrides", "variants", "seeds")} == {
        k: conditions[k] for k in ("recipe", "overrides", "variants", "seeds")
    }
    # without compare.json, the grid is found from the <variant>/seed<k> folders
    (grid_copy / "compare.json").unlink()
    (grid_copy / "se_a" / "seed1" / "results.json").unlink()  # an unfinished run is listed
    assert main(["report", str(grid_copy)]) == 0
    out = capsys.readouterr().out
    assert "Not finished (left out): se_a/seed1." in out
    assert json.loads((grid_copy / "compare.json").read_text())["variants"]["se_a"]["n"] == 1


# --- resume, restart and failures ---------------------------------------------------------------


class _Killed(Exception):
    pass


def _kill_on(prefix: str):
    def log(line: str) -> None:
        if line.startswith(prefix):
            raise _Killed(prefix)

    return condattn_log(log)


def test_killed_run_is_resumed_and_unstarted_run_restarted(tmp_path: Path) -> None:
    sets = [s for s in TINY if not s.startswith("optim.epochs")] + ["optim.epochs=2"]
    kwargs = {"variants": ("se",), "seeds": SEEDS, "overrides": sets, "out_dir": tmp_path}
    killed, unstarted = plan_grid(QUICK, **kwargs)
    data = condattn.train.build.load_data(killed.cfg, synthetic=True)
    # killed right after epoch 1's checkpoint; and killed before its first checkpoint
    with pytest.raises(_Killed), _kill_on("epoch 1/"):
        condattn.train.train(killed.cfg, data=data, run_dir=killed.run_dir)
    with pytest.raises(_Killed), _kill_on("model"):
        condattn.train.train(unstarted.cfg, data=data, run_dir=unstarted.run_dir)
    assert (run_state(killed), run_state(unstarted)) == ("resume", "restart")
    lines: list[str] = []
    with condattn_log(lines.append):
        summary = compare(QUICK, synthetic=True, **kwargs)
    assert "2 runs: 0 done (reused), 1 to resume, 1 to train" in lines[0]
    starts = json.loads((killed.run_dir / "environment.json").read_text())["starts"]
    assert [(s["resumed"], s["start_epoch"]) for s in starts] == [(False, 1), (True, 2)]
    starts = json.loads((unstarted.run_dir / "environment.json").read_text())["starts"]
    assert [(s["resumed"], s["start_epoch"]) for s in starts] == [(False, 1)]
    for run in (killed, unstarted):
        rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
    assert summary["variants"]["se"]["n"] == 2
    assert summary["differences"] == []  # one variant: nothing to compare
    md = (tmp_path / "compare.md").read_text()
    assert "| SE |" in md and "Differences" not in md


def test_failed_run_is_one_line_with_its_traceback_logged(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(condattn.train, "train", boom)
    with pytest.raises(CompareError) as info:
        compare(
            QUICK,
            variants=("se",),
            seeds=(0,),
            overrides=TINY,
            out_dir=tmp_path,
            synthetic=True,
        )
    msg = str(info.value)
    assert "1 of 1 run(s) failed" in msg and "run se/seed0 failed: RuntimeError: boom" in msg
    log = tmp_path / "logs" / "se-seed0.log"
    assert str(log) in msg and "Traceback" in log.read_text()


def test_child_process_failure_reports_the_last_line(tmp_path: Path) -> None:
    (run,) = plan_grid(QUICK, variants=("se",), seeds=(0,), overrides=TINY, out_dir=tmp_path)
    log = tmp_path / "logs" / "se-seed0.log"
    err = _train_in_child(
        run, resume=False, synthetic=False, data_root=str(tmp_path / "nope"), log_path=log
    )
    assert err.startswith("run se/seed0 failed: exit status 1: ")
    assert "\n" not in err and "nope" in err.splitlines()[0]
    assert "Traceback" in log.read_text()


@pytest.mark.slow  # two child processes import torch on shared cores: ~20 s
def test_jobs_train_side_by_side_in_child_processes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("condattn.experiments._cores", lambda: 2)
    sets = [s for s in TINY if not s.startswith("system.threads")]
    summary = compare(
        QUICK,
        variants=("se",),
        seeds=SEEDS,
        overrides=sets,
        out_dir=tmp_path,
        jobs=2,
        synthetic=True,
    )
    assert summary["variants"]["se"]["n"] == 2
    assert summary["conditions"]["threads"] == 1  # 2 cores // 2 jobs (1 job: 2 threads)
    for s in SEEDS:
        env = json.loads((tmp_path / "se" / f"seed{s}" / "environment.json").read_text())
        assert "_worker" in env["starts"][-1]["argv"][0]  # trained in a child process
        assert (tmp_path / "logs" / f"se-seed{s}.log").read_text().strip()
