"""``benchmarks/zoo_sweep.py``: its per-model check on a handful of small zoo models.

The default suite runs the check on torchvision's MobileNetV3-Large (graph route), timm's
LCNet-050 (one head: all its SE is in the last stage), timm's smallest NF network (attention
inside timm's not-traceable ``NormFreeBlock``: the in-place route) and timm's ResNet-10t (no
attention: through ``add_attention``), plus the skip rules (a ViT is not a CNN) and the
result files. A slow test runs a seeded random sample of 20 attention models from both zoos.
"""

from __future__ import annotations

import importlib
import json
import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def zs():
    import torch

    threads = torch.get_num_threads()
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("zoo_sweep")
    finally:
        sys.path.remove(str(BENCH))
        torch.set_num_threads(threads)


def _assert_preserved(row: dict) -> None:
    assert row["status"] == "pass", row
    assert row["rel_diff"] <= 1e-4, row
    assert row["fed"] >= 1 and row["twins"] == row["fed"] == row["twins_with_t"], row
    assert row["eval_deterministic"], row  # converted in train mode, it follows .eval()
    assert sum(row["routes"].values()) == row["fed"], row


@pytest.mark.parametrize(
    ("zoo", "name", "route", "heads"),
    [
        ("torchvision", "mobilenet_v3_large", "graph", 2),
        ("timm", "lcnet_050", "graph", 1),
        ("timm", "test_nfnet", "in-place", 1),
    ],
)
def test_check_model_on_small_zoo_models(zs, zoo: str, name: str, route: str, heads: int) -> None:
    row = zs.check_model(zoo, name)
    _assert_preserved(row)
    assert set(row["routes"]) == {route}
    assert len(row["heads"]) == heads
    assert row["size"] == 64


def test_a_plain_cnn_goes_through_add_attention_and_keeps_its_function(zs) -> None:
    row = zs.check_model("timm", "resnet10t")
    _assert_preserved(row)
    assert row["route"] == "add_attention" and row["kinds"] == []
    assert row["positions"] == {"standard": 4, "post": 2}  # 4 basic blocks; 2 units of the stem
    assert row["added_rel_diff"] == 0.0  # identity init: exactly the source's function


def test_transformers_plain_models_off_and_models_over_the_cap_are_skipped(zs) -> None:
    vit = zs.check_model("timm", "vit_tiny_patch16_224")
    assert vit["status"] == "skip" and vit["reason"].startswith("not a CNN")
    assert vit["downsampling"] == 1  # its patch embedding
    off = zs.check_model("timm", "resnet10t", plain=False)
    assert (off["status"], off["reason"], off["kinds"]) == ("skip", "no swappable attention", [])
    big = zs.check_model("timm", "lcnet_050", max_params=1e5)
    assert big["status"] == "skip" and "size cap" in big["reason"]
    assert big["kinds"] == ["SqueezeExcite"] and big["params"] > 1e5


def test_verdict_fails_a_difference_a_twin_without_t_and_a_random_eval(zs) -> None:
    ok = {"rel_diff": 1e-7, "twins_without_t": [], "eval_deterministic": True}
    assert zs._verdict(ok, 1e-4) == ("pass", "")
    status, reason = zs._verdict({**ok, "eval_deterministic": False}, 1e-4)
    assert status == "fail" and ".eval()" in reason
    assert zs._verdict({**ok, "rel_diff": 2e-3}, 1e-4)[0] == "fail"
    assert zs._verdict({**ok, "rel_diff": float("nan")}, 1e-4)[0] == "fail"
    status, reason = zs._verdict({**ok, "twins_without_t": ["layer3.0.se"]}, 1e-4)
    assert status == "fail" and "layer3.0.se" in reason


def test_main_writes_json_and_markdown(zs, tmp_path) -> None:
    models = ["timm:test_nfnet", "timm:resnet10t", "timm:vit_tiny_patch16_224"]
    assert zs.main(["--models", *models, "--jobs", "0", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "zoo_sweep_cpu.json").read_text())
    assert payload["summary"]["timm"] == {
        "listed": 3, "attention": 1, "plain": 1, "not_cnn": 1, "over_cap": 0, "run": 2,
        "passed": 2, "failed": 0,
    }  # fmt: skip
    assert [r["model"] for r in payload["models"]] == ["test_nfnet", "resnet10t"]
    assert [r["model"] for r in payload["left_out"]] == ["vit_tiny_patch16_224"]
    assert "git_sha" in payload["conditions"]
    text = (tmp_path / "zoo_sweep_cpu.md").read_text()
    assert "| timm | 3 | 1 | 1 | 1 | 0 | 2/2 |" in text and "in-place 1" in text
    assert "route `add_attention`: timm 1/1" in text and "| timm | resnet | 1/1 |" in text


@pytest.mark.slow  # 20 models, some at 224 px: minutes
def test_a_random_sample_of_attention_models_keeps_its_function(zs) -> None:
    candidates = [(z, n) for z in zs.ZOOS for n in zs.list_models(z)]
    random.Random(2024).shuffle(candidates)
    rows = []
    for zoo, name in candidates:
        found = zs.detect(zoo, name)
        if found["kinds"] and found["params"] <= zs.MAX_PARAMS:
            rows.append(zs.check_model(zoo, name))
        if len(rows) == 20:
            break
    failed = [(r["model"], r.get("reason")) for r in rows if r["status"] != "pass"]
    assert not failed, failed
