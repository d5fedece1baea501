"""condattn.analysis: gate recording, std of s per block, the Fig. 6 plot, analyze command."""

from __future__ import annotations

import json

import pytest
import torch

import condattn
from condattn.analysis import (
    attention_modules,
    attention_stats,
    channel_std,
    plot_attention_std,
    record_gates,
)
from condattn.cli import main

TINY = (8, 8, 16, 16)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pair(arch: str = "se_resnet18"):
    torch.manual_seed(0)
    base = condattn.models.create_model(arch, num_classes=10, widths=TINY)
    return base, condattn.convert(base, init="default")


def _no_leftovers(model: torch.nn.Module) -> None:
    left = [n for n, m in model.named_modules() if "_scale" in m.__dict__]
    assert not left, f"record_gates left instance _scale attributes on {left}"


@pytest.mark.parametrize("arch", ["se_resnet18", "cbam_resnet18", "ca_resnet18", "eca_resnet18"])
def test_stats_shapes_and_range(arch):
    base, conv = _pair(arch)
    images = torch.randn(5, 3, 32, 32)
    for model in (base, conv):
        stats = attention_stats(model, images, batch_size=2)  # 3 batches: 2 + 2 + 1
        assert stats["n_images"] == 5
        assert stats["order"] == list(attention_modules(model))  # every block, network order
        for name, b in stats["blocks"].items():
            assert len(b["std_per_image"]) == 5, f"{arch} {name}: one std per image"
            assert 0.0 <= b["s_min"] <= b["s_mean"] <= b["s_max"] <= 1.0, (
                f"{arch} {name}: s in [0,1]"
            )
            assert b["mean_std"] >= 0.0
            assert b["stage"] == name.split(".")[0]
        _no_leftovers(model)


def test_stage_filter_and_training_mode_restored():
    _, conv = _pair()
    conv.train()
    stats = attention_stats(conv, torch.randn(3, 3, 32, 32), stage="layer3")
    assert set(stats["blocks"]) == {"layer3.0.attn", "layer3.1.attn"}
    assert conv.training, "attention_stats must restore train mode"
    with pytest.raises(ValueError, match="no attention block"):
        attention_stats(conv, torch.randn(2, 3, 32, 32), stage="layer9")


def test_std_is_across_channels_per_image():
    """The recorded std equals std over C of the gate of each image, computed by hand."""
    base, _ = _pair()
    images = torch.randn(4, 3, 32, 32)
    base.eval()
    with torch.no_grad(), record_gates(base, stage="layer2") as rec:
        base(images)
    s = rec["layer2.0.attn"][0]  # (B, C, 1, 1)
    assert s.shape == (4, TINY[1], 1, 1)
    expected = torch.stack([s[i].flatten().std(correction=0) for i in range(4)])
    stats = attention_stats(base, images, stage="layer2")
    got = torch.tensor(stats["blocks"]["layer2.0.attn"]["std_per_image"])
    torch.testing.assert_close(got, expected, msg="std_per_image vs std over channels by hand")


def test_channel_std_spatial_gate_averages_positions():
    s = torch.rand(2, 6, 3, 3)
    expected = s.std(dim=1, correction=0).mean((1, 2))
    torch.testing.assert_close(channel_std(s), expected)
    assert channel_std(torch.rand(2, 6)).shape == (2,)
    with pytest.raises(ValueError):
        channel_std(torch.rand(2, 6, 3))


def test_instance_attributes_restored_even_on_error():
    _, conv = _pair()
    with pytest.raises(RuntimeError), record_gates(conv):
        assert any("_scale" in m.__dict__ for m in conv.modules())
        raise RuntimeError("boom")
    _no_leftovers(conv)
    # a pre-existing instance attribute is put back, not deleted
    m = conv.get_submodule("layer3.0.attn")
    sentinel = m._scale
    m.__dict__["_scale"] = sentinel
    with record_gates(conv):
        assert m.__dict__["_scale"] is not sentinel
    assert m.__dict__["_scale"] is sentinel
    del m.__dict__["_scale"]
    # the model computes the same thing after recording
    x = torch.randn(2, 3, 32, 32)
    conv.eval()
    before = conv(x).logits
    attention_stats(conv, x)
    torch.testing.assert_close(conv(x).logits, before)


def test_plot_is_png(tmp_path):
    base, conv = _pair()
    x = torch.randn(6, 3, 32, 32)
    a, b = attention_stats(base, x), attention_stats(conv, x)
    path = plot_attention_std(a, b, labels=("SE", "SE-R"), path=tmp_path / "f" / "fig6.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no attention blocks"):
        plot_attention_std(a, b, labels=("a", "b"), path=tmp_path / "x.png", stage="layer7")


def test_analyze_command_on_condattn_save_files(tmp_path):
    base, conv = _pair()
    se_a = condattn.convert(base, conditioned=False)
    condattn.save(se_a, tmp_path / "se_a.pt")
    condattn.save(conv, tmp_path / "se_r.pt")
    rc = main(
        [
            "analyze",
            str(tmp_path / "se_a.pt"),
            str(tmp_path / "se_r.pt"),
            "--synthetic",
            "--n",
            "4",
            "--arch",
            "se_resnet18",
            "--widths",
            *map(str, TINY),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0
    stats = json.loads((tmp_path / "out" / "attention_stats_1.json").read_text())
    assert stats["n_images"] == 4 and "layer3.0.attn" in stats["blocks"]
    assert (tmp_path / "out" / "attention_std.png").read_bytes()[:8] == PNG_MAGIC


def test_analyze_command_on_run_checkpoint(tmp_path):
    from condattn.train.build import build_model
    from condattn.train.checkpoint import save_checkpoint
    from condattn.train.recipe import config_from_dict

    cfg = config_from_dict({"model": {"arch": "se_resnet18", "variant": "se_r", "widths": TINY}})
    model = build_model(cfg, num_classes=100)
    save_checkpoint(
        tmp_path / "checkpoint.pt",
        {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 0},
    )
    argv = ["analyze", str(tmp_path), "--synthetic", "--n", "3", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    stats = json.loads((tmp_path / "o" / "attention_stats_0.json").read_text())
    assert stats["label"].startswith("SE-R")
    assert not (tmp_path / "o" / "attention_std.png").exists()  # one model: no comparison plot


def test_analyze_refuses_what_it_cannot_load(tmp_path, capsys):
    _, conv = _pair()
    condattn.save(conv, tmp_path / "se_r.pt")
    out = ["--synthetic", "--n", "2", "--out", str(tmp_path / "out")]
    assert main(["analyze", str(tmp_path / "se_r.pt"), *out]) == 2
    assert "written by condattn.save: give its base model (--arch)" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    assert main(["analyze", str(tmp_path / "other.pt"), *out]) == 2
    assert "neither a run checkpoint nor a condattn.save file" in capsys.readouterr().err
