"""Issue 12: every bad file, flag and environment gets a one-line answer; no silent fallbacks.

Each test runs the real command (``condattn.cli.main``) and checks what a user sees: exit status
2 and exactly one line on stderr that names the file or flag and what works instead. A tiny
2-epoch run on a synthetic CIFAR-100 (module fixture) serves as the good checkpoint.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import condattn
from condattn.cli import main
from condattn.data import write_synthetic_cifar100
from condattn.models import create_model
from condattn.train import loop
from condattn.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
TINY = [
    "model.widths=[8, 8, 16, 16]",
    "optim.batch_size=64",
    "optim.epochs=2",
    "optim.milestones=[0.5]",  # a fraction: after epoch 1 of 2, none in a 1-epoch run
    "data.train_subset=0",
    "system.threads=1",
    "system.progress=off",
]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """The command's stderr: one line, no traceback, containing every needle."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar100(root, n_train=256, n_test=128)
    return root


@pytest.fixture(scope="module")
def run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished 2-epoch SE-R run and its console output."""
    out = tmp_path_factory.mktemp("runs") / "run"
    lines: list[str] = []
    mp = pytest.MonkeyPatch()
    mp.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    try:
        rc = main(["train", QUICK, "--data", str(data_dir), "--out", str(out), *_sets(TINY)])
    finally:
        mp.undo()
    assert rc == 0
    return out, "\n".join(lines)


# --- item 1: corrupt or foreign checkpoint files -------------------------------------------------


class _Touch:
    """A pickle that would create a file when unpickled (what weights_only=True must refuse)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def _bad_file(kind: str, path: Path, good: Path) -> str:
    """Writes a bad checkpoint of ``kind``; returns a word its error message must contain."""
    if kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
        return "not a PyTorch checkpoint"
    if kind == "empty":
        path.write_bytes(b"")
        return "empty file"
    if kind == "text":
        path.write_text("hello world\n")
        return "not a PyTorch checkpoint"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "not a PyTorch checkpoint"
    if kind == "plain pickle":
        path.write_bytes(pickle.dumps({"model": 1}))
        return "not a PyTorch checkpoint"
    if kind == "foreign torch file":
        torch.save({"weights": torch.zeros(3)}, path)
        return "neither a run checkpoint" if path.name != "checkpoint.pt" else "not a condattn"
    if kind == "numpy inside":
        torch.save({"format_version": 1, "model": {}, "rng": np.zeros(3)}, path)
        return "pickled Python objects"
    if kind == "code on load":
        torch.save({"model": _Touch(path.parent / "pwned")}, path)
        return "pickled Python objects"
    raise AssertionError(kind)


BAD = [
    "random bytes",
    "empty",
    "text",
    "truncated",
    "plain pickle",
    "foreign torch file",
    "numpy inside",
    "code on load",
]


@pytest.mark.parametrize("kind", BAD)
def test_eval_and_analyze_answer_a_bad_file_in_one_line(kind, run, tmp_path, capsys) -> None:
    run_dir, _ = run
    bad = tmp_path / "bad.pt"
    word = _bad_file(kind, bad, run_dir / "checkpoint.pt")
    assert main(["eval", str(bad), "--synthetic"]) == 2
    err = _one_line_error(capsys, str(bad))
    if "neither" not in word:
        assert word in err
    assert main(["analyze", str(bad), "--synthetic", "--n", "2", "--out", str(tmp_path / "a")]) == 2
    _one_line_error(capsys, str(bad), word)
    assert not (tmp_path / "pwned").exists(), "unpickling ran code from the file"
    assert not (tmp_path / "a").exists(), "analyze wrote output for a file it could not read"


@pytest.mark.parametrize("kind", BAD)
def test_resume_answers_a_bad_checkpoint_in_one_line(kind, run, data_dir, tmp_path, capsys):
    run_dir, _ = run
    bad_run = tmp_path / "r"
    bad_run.mkdir()
    word = _bad_file(kind, bad_run / "checkpoint.pt", run_dir / "checkpoint.pt")
    argv = ["train", QUICK, "--data", str(data_dir), "--out", str(bad_run), "--resume"]
    assert main([*argv, *_sets(TINY)]) == 2
    _one_line_error(capsys, str(bad_run / "checkpoint.pt"), word.replace("neither a run", "not a"))
    assert not (tmp_path / "r" / "pwned").exists()


def test_eval_refuses_a_condattn_save_file_and_weights_that_do_not_fit(run, tmp_path, capsys):
    run_dir, _ = run
    model = condattn.convert(create_model("se_resnet18", num_classes=10, widths=(8, 8, 16, 16)))
    condattn.save(model, tmp_path / "saved.pt")
    assert main(["eval", str(tmp_path / "saved.pt"), "--synthetic"]) == 2
    _one_line_error(capsys, "saved.pt", "condattn.save file", "analyze")

    state = load_checkpoint(run_dir)
    state["config"]["model"]["widths"] = [16, 16, 32, 32]  # not the widths of the weights
    save_checkpoint(tmp_path / "mismatch.pt", state)
    assert main(["eval", str(tmp_path / "mismatch.pt"), "--synthetic"]) == 2
    _one_line_error(capsys, "mismatch.pt", "do not fit the model its config builds")


def test_a_run_checkpoint_holds_only_tensors_and_plain_data(run) -> None:
    run_dir, _ = run
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)  # raises on any object
    assert state["format_version"] == 2
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert isinstance(state["rng"]["python"]["state"], torch.Tensor)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "c.pt", {"model": {}, "config": {}, "epoch": 0, "rng": rng_state()})
    expected = (torch.rand(3), np.random.standard_normal(4), random.random(), random.gauss(0, 1))
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.standard_normal(4), random.random(), random.gauss(0, 1))
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]


# --- item 2: a CUDA device that is not there ---------------------------------------------------


def test_cuda_without_cuda_is_one_line_everywhere(run, data_dir, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["train", QUICK, "--data", str(data_dir), "--out", str(tmp_path / "x")]
    assert main([*argv, *_sets([*TINY, "system.device=cuda"])]) == 2
    _one_line_error(capsys, "system.device=cuda", "no CUDA device", "system.device=cpu")
    assert not (tmp_path / "x").exists()
    assert main(["eval", str(run_dir), "--synthetic", "--device", "cuda"]) == 2
    _one_line_error(capsys, "--device=cuda", "no CUDA device")
    assert main(["analyze", str(run_dir), "--synthetic", "--device", "cuda"]) == 2
    _one_line_error(capsys, "--device=cuda", "no CUDA device")


# --- item 4: a run killed before its first checkpoint ------------------------------------------


def test_a_run_killed_in_epoch_1_is_answered_with_the_command_that_works(
    data_dir, tmp_path, capsys, monkeypatch
) -> None:
    out = tmp_path / "killed"
    argv = ["train", QUICK, "--data", str(data_dir), "--out", str(out), *_sets(TINY)]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C during the first epoch

    with monkeypatch.context() as m:
        m.setattr(loop, "_run_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            main(argv)
    assert (out / "metrics.jsonl").exists() and not (out / "checkpoint.pt").exists()
    capsys.readouterr()

    assert main(argv) == 2
    err = _one_line_error(capsys, str(out), "before its first checkpoint", "--overwrite")
    assert "--resume to" not in err
    assert main([*argv, "--resume"]) == 2
    _one_line_error(capsys, "nothing to resume", "--overwrite")
    assert main([*argv, "--resume", "--overwrite"]) == 2
    _one_line_error(capsys, "--resume", "--overwrite")
    assert main(["train", QUICK, "--out", str(tmp_path / "never"), "--resume"]) == 2
    _one_line_error(capsys, "no run in", "drop --resume")

    assert main([*argv, "--overwrite", "--set", "optim.epochs=1"]) == 0  # the suggested command
    assert load_checkpoint(out)["epoch"] == 1


# --- item 5: one epoch convention (1-based) -----------------------------------------------------


def test_epochs_are_numbered_from_1_everywhere_a_user_sees_them(run, capsys, monkeypatch):
    run_dir, console = run
    assert re.findall(r"^epoch (\d)/2 ", console, re.M) == ["1", "2"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["final"]["epoch"] == 2 and res["val_chosen"] is None  # no val split
    assert load_checkpoint(run_dir)["epoch"] == 2  # epochs finished
    env = json.loads((run_dir / "environment.json").read_text())
    assert [s["start_epoch"] for s in env["starts"]] == [1]
    assert main(["eval", str(run_dir), "--synthetic"]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 2

    from condattn.train import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    plots.plot_curves(rows, "unused.png")
    plots.plot_comparison({"a": rows}, "unused.png")
    for fig in figures:
        assert list(fig.axes[0].lines[0].get_xdata()) == [1, 2]


def test_resume_continues_the_numbering(run, data_dir, tmp_path, capsys) -> None:
    run_dir, _ = run
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run_dir.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    argv = ["train", QUICK, "--data", str(data_dir), "--out", str(copy), "--resume"]
    # the run's lr steps are fractions ([0.5] of 2: after epoch 1); of 3 they would move to
    # epoch 2, which the finished epochs did not follow: refused, naming the override that keeps
    # them
    assert main([*argv, *_sets([*TINY, "optim.epochs=3"])]) == 2
    err = capsys.readouterr().err
    assert "optim.milestones: checkpoint '[0.5] of 2 epochs: lr steps after epochs [1]'" in err
    assert "!= now '[0.5] of 3 epochs: lr steps after epochs [2]'" in err
    assert 'extend it with the lr steps it was trained with: --set "optim.milestones=[1]"' in err
    assert main([*argv, *_sets([*TINY, "optim.epochs=3", "optim.milestones=[1]"])]) == 0
    assert re.findall(r"^epoch (\d)/3 ", capsys.readouterr().out, re.M) == ["3"]
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    env = json.loads((copy / "environment.json").read_text())
    assert [s["start_epoch"] for s in env["starts"]] == [1, 3]


# --- item 6: report and analyze write only where told, never over a file -------------------------


def test_report_writes_a_plot_only_where_told(run, tmp_path, capsys, monkeypatch) -> None:
    run_dir, _ = run
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(run_dir)]) == 0
    assert "no plot written" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [], "report wrote into the working directory"
    plot = tmp_path / "cmp.png"
    assert main(["report", str(run_dir), "--plot", str(plot)]) == 0
    assert f"written to {plot}" in capsys.readouterr().out
    before = plot.read_bytes()
    assert main(["report", str(run_dir), "--plot", str(plot)]) == 2
    _one_line_error(capsys, str(plot), "exists", "--overwrite")
    assert plot.read_bytes() == before
    assert main(["report", str(run_dir), "--plot", str(plot), "--overwrite"]) == 0


def test_analyze_writes_into_the_run_directory_and_never_over_a_file(
    run, tmp_path, capsys, monkeypatch
) -> None:
    run_dir, _ = run
    monkeypatch.chdir(tmp_path)
    args = ["analyze", str(run_dir), "--synthetic", "--n", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    target = run_dir / "analysis" / "attention_stats_0.json"
    assert target.is_file() and f"wrote {target}" in out
    assert list(tmp_path.iterdir()) == [], "analyze wrote into the working directory"
    assert main(args) == 2
    _one_line_error(capsys, str(target), "exists", "--overwrite")
    assert main([*args, "--overwrite"]) == 0
    assert main([*args, "--stage", "layer9", "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "--stage 'layer9'", "layer3")
    assert main([*args, "--n", "0"]) == 2
    _one_line_error(capsys, "--n must be >= 1")


# --- item 7: --version, and a torchrun line that runs after the quick run -------------------------


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"condattn {condattn.__version__} (torch ")


def test_readme_torchrun_line_has_its_own_run_directory() -> None:
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if "torchrun" in ln]
    train = [ln for ln in lines if " train " in ln]
    assert train, "README has no torchrun train line"
    for ln in train:
        found = re.search(r"--out (\S+)", ln)
        assert found and found.group(1) != "runs/quick", ln


# --- item 8: fidelity options and labels ---------------------------------------------------------


def test_aux_model_feeds_needs_an_aux_model_and_se_r(data_dir, tmp_path, capsys) -> None:
    argv = ["train", QUICK, "--data", str(data_dir), "--out", str(tmp_path / "x")]
    sets = [*TINY, "model.aux_model_feeds=layer3,layer4"]
    assert main([*argv, *_sets(sets)]) == 2
    _one_line_error(capsys, "model.aux_model_feeds", "model.aux_model")
    assert not (tmp_path / "x").exists()


def test_recipes_flag_the_table_6_and_11_assumptions() -> None:
    for path in [*REPO.glob("recipes/table6/*.toml"), *REPO.glob("recipes/table11/*.toml")]:
        assert "Assumptions" in path.read_text(), path
    concepts = (REPO / "docs" / "concepts.md").read_text()
    section = concepts.split("## The paper's facts vs our choices", 1)[1]
    for choice in ("raw logits", "not detached", "thop 0.0.31", "pool", "final epoch"):
        assert choice in section, choice


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("optim.lr=-1", ("optim.lr must be > 0, got -1.0",)),
        ("optim.epochs=0", ("optim.epochs must be >= 1, got 0",)),
        ("model.varaint=se_r", ("unknown key 'model.varaint'", "variant")),
        ("model.variant=se_b", ("model.variant='se_b'", "se_r")),
    ],
)
def test_a_bad_recipe_value_is_one_line_naming_the_key(override, needles, tmp_path, capsys):
    argv = ["train", QUICK, "--synthetic", "--out", str(tmp_path / "x"), "--set", override]
    assert main(argv) == 2
    _one_line_error(capsys, *needles)
    assert not (tmp_path / "x").exists()


def test_resume_under_another_config_is_one_line(run, data_dir, capsys) -> None:
    run_dir, _ = run
    argv = ["train", QUICK, "--data", str(data_dir), "--out", str(run_dir), "--resume"]
    assert main([*argv, *_sets([*TINY, "optim.lr=0.05"])]) == 2
    _one_line_error(capsys, "cannot resume", "optim.lr: checkpoint 0.1 != now 0.05", "--overwrite")
