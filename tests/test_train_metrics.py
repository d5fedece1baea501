"""Metrics, atomic checkpoints and plots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from condattn.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from condattn.train.metrics import MetricSums, append_jsonl, read_jsonl, topk_correct
from condattn.train.plots import plot_comparison, plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_topk_correct() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    target = torch.tensor([5, 5])
    top1, top5 = topk_correct(logits, target)
    assert (int(top1), int(top5)) == (1, 1)
    top1, top5 = topk_correct(logits[:, :3], torch.tensor([0, 2]))  # k capped at 3 classes
    assert (int(top1), int(top5)) == (0, 2)


def test_metric_sums_weight_by_batch_size() -> None:
    s = MetricSums(num_aux=1)
    logits = torch.eye(4)
    s.add(
        logits=logits[:3],
        target=torch.tensor([0, 1, 0]),
        loss=torch.tensor(1.0),
        main=torch.tensor(0.5),
        aux=(torch.tensor(2.0),),
    )
    s.add(
        logits=logits[:1],
        target=torch.tensor([0]),
        loss=torch.tensor(3.0),
        main=torch.tensor(0.5),
        aux=(torch.tensor(0.0),),
    )
    m = s.means()
    assert m["n"] == 4
    assert m["loss"] == pytest.approx((3 * 1.0 + 3.0) / 4)
    assert m["aux_losses"] == [pytest.approx(6.0 / 4)]
    assert m["top1"] == pytest.approx(75.0)


def test_jsonl_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"epoch": 0})
    with open(path, "a") as f:
        f.write('{"epoch": 1, "lo')  # a run killed mid-write
    assert read_jsonl(path) == [{"epoch": 0}]


def test_checkpoint_is_atomic_and_round_trips(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 4, "rng": rng_state(), "config": {}}
    save_checkpoint(path, state)
    back = load_checkpoint(tmp_path)  # a run dir works too
    assert back["epoch"] == 4 and torch.equal(back["model"]["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp files left

    # A crash while writing leaves the previous checkpoint intact.
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {**state, "epoch": 5})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a condattn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_rng_state_round_trip() -> None:
    state = rng_state()
    a = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 0 and im.size[1] > 0


def test_plots_are_pngs(tmp_path: Path) -> None:
    hist = [{"epoch": e, "train_top1": 10.0 * e, "test_top1": 8.0 * e} for e in range(4)]
    _assert_png(plot_curves(hist, tmp_path / "c.png", title="t"))
    _assert_png(plot_comparison({"a": hist, "b": hist[:2]}, tmp_path / "cmp.png"))
