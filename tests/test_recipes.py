"""Every recipe resolves, and together they cover every row of the paper's Tables 3-11."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from condattn.train.config import milestone_epochs
from condattn.train.recipe import list_recipes, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ALL = list_recipes(RECIPES)

# The paper's rows: (table, variant, depth, lossW, aux dropout, aux position, r, aux model, top-1).
# lossW is that of the heads (or of the aux model in Table 11); "se" rows have none. Table 11's
# aux model feeds every SE block (our reading); ALT_FEEDS is the other reading's recipe.
H = ("layer2", "layer3")
ALT_FEEDS = ("layer3", "layer4")
ROWS = [
    *[
        ("3", "se", d, (), 0.7, (), 8, "", acc)
        for d, acc in ((34, 78.12), (50, 78.22), (101, 78.54))
    ],
    ("3", "se_r", 34, (0.4, 0.4), 0.7, H, 8, "", 78.98),
    ("3", "se_r", 50, (0.3, 0.3), 0.7, H, 8, "", 79.96),
    ("3", "se_r", 101, (0.3, 0.2), 0.7, H, 8, "", 80.48),
    *[
        ("4", "se", d, (), 0.7, (), 8, "", acc)
        for d, acc in ((34, 78.12), (50, 78.22), (101, 78.54))
    ],
    ("4", "se_a", 34, (0.4, 0.4), 0.7, H, 8, "", 78.78),
    ("4", "se_a", 50, (0.3, 0.3), 0.7, H, 8, "", 79.25),
    ("4", "se_a", 101, (0.3, 0.2), 0.7, H, 8, "", 79.86),
    ("4", "se_r", 34, (0.4, 0.4), 0.7, H, 8, "", 78.98),
    ("4", "se_r", 50, (0.3, 0.3), 0.7, H, 8, "", 79.96),
    ("4", "se_r", 101, (0.3, 0.2), 0.7, H, 8, "", 80.48),
    *[
        ("5", "se_r", 50, (0.3, 0.3), p, H, 8, "", acc)
        for p, acc in ((0.3, 79.78), (0.5, 79.93), (0.7, 79.96), (0.9, 79.77))
    ],
    ("6", "se_r", 50, (0.3,), 0.7, ("layer3",), 8, "", 78.42),
    ("6", "se_r", 50, (0.3,), 0.7, ("layer2",), 8, "", 80.12),
    ("6", "se_r", 50, (0.3,), 0.7, ("layer1",), 8, "", 78.96),
    ("7", "se", 34, (), 0.7, (), 8, "", 78.12),
    *[
        ("7", "se_r", 34, (w, w), 0.7, H, 8, "", acc)
        for w, acc in ((0.3, 78.46), (0.4, 78.98), (0.5, 78.68), (0.6, 78.59))
    ],
    ("8", "se", 50, (), 0.7, (), 8, "", 78.22),
    *[
        ("8", "se_r", 50, (w, w), 0.7, H, 8, "", acc)
        for w, acc in (
            (0.2, 79.26),
            (0.3, 79.96),
            (0.4, 79.69),
            (0.5, 79.16),
            (0.6, 79.58),
            (0.7, 79.31),
        )
    ],
    ("9", "se", 101, (), 0.7, (), 8, "", 78.54),
    *[
        ("9", "se_r", 101, w, 0.7, H, 8, "", acc)
        for w, acc in (
            ((0.3, 0.1), 80.09),
            ((0.3, 0.2), 80.48),
            ((0.3, 0.3), 80.04),
            ((0.4, 0.2), 79.66),
            ((0.2, 0.2), 78.89),
        )
    ],
    *[
        ("10", "se_r", 50, (0.3, 0.3), 0.7, H, r, "", acc)
        for r, acc in ((8, 79.96), (12, 79.69), (16, 79.53))
    ],
    ("11", "se", 50, (), 0.7, (), 8, "", 78.22),
    *[
        ("11", "se_r", 50, (w,), 0.7, (), 8, "googlenet_cifar", acc)
        for w, acc in ((0.1, 77.27), (0.2, 77.05), (0.3, 78.05), (0.4, 77.32), (0.5, 77.61))
    ],
    ("11", "se_r", 50, (0.3,), 0.7, (), 8, ("googlenet_cifar", ALT_FEEDS), 78.05),
]


def _key(cfg) -> tuple:
    m = cfg.model
    return (
        m.variant,
        cfg.depth,
        tuple(cfg.loss.aux_weights),
        m.aux_dropout if m.variant != "se" else 0.7,
        tuple(m.aux_at),
        m.r,
        (m.aux_model, m.aux_model_feeds) if m.aux_model_feeds else m.aux_model,
    )


@pytest.fixture(scope="module")
def configs() -> dict:
    return {name: load_recipe(RECIPES / name) for name in ALL}


def test_every_recipe_resolves(configs: dict) -> None:
    assert len(ALL) >= 35
    for name, cfg in configs.items():
        assert cfg.name == Path(name).stem or name == "quick.toml", name
        if name == "quick.toml":
            continue
        o = cfg.optim  # the paper's section 4 schedule, inherited from base.toml
        if Path(name).parts[0] == "evidence":  # scaled in time: lr steps at the same fractions
            assert o.milestones == (0.3, 0.6, 0.8), name  # the paper's 60/120/160 of 200
            paper = tuple(math.ceil(m * o.epochs / 200) for m in (60, 120, 160))
            assert milestone_epochs(o) == paper, name
            assert (o.lr, o.batch_size, o.gamma, o.warmup_epochs) == (0.1, 128, 0.2, 1), name
            assert (o.momentum, o.nesterov, o.weight_decay) == (0.9, True, 5e-4), name
            continue
        assert (o.lr, o.batch_size, o.epochs, o.milestones, o.gamma) == (
            0.1,
            128,
            200,
            (60, 120, 160),
            0.2,
        ), name
        assert (o.momentum, o.nesterov, o.weight_decay, o.warmup_epochs) == (0.9, True, 5e-4, 1)
        assert cfg.model.cond_init == "default", name
        assert cfg.paper.tables and cfg.paper.top1 > 0 and cfg.paper.row, name
        assert Path(name).parts[0] == f"table{cfg.paper.tables[0]}", name


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"T{r[0]}-{r[1]}{r[2]}-{r[3]}-{r[5]}-{r[6]}")
def test_paper_row_has_a_recipe(row: tuple, configs: dict) -> None:
    table, *key, top1 = row
    matches = [n for n, c in configs.items() if table in c.paper.tables and _key(c) == tuple(key)]
    assert len(matches) == 1, f"Table {table} row {key}: recipes {matches}"
    assert configs[matches[0]].paper.top1 == top1


def test_no_recipe_outside_the_tables(configs: dict) -> None:
    keyed = {(t, *_key(c)) for c in configs.values() for t in c.paper.tables}
    assert keyed == {row[:-1] for row in ROWS}


def test_quick_recipe_is_small(configs: dict) -> None:
    q = configs["quick.toml"]
    assert q.model.variant == "se_r" and q.model.widths == (16, 32, 64, 128)
    assert q.optim.epochs <= 5 and 0 < q.data.train_subset <= 10_000 and q.system.threads >= 0


def test_recipes_readme_lists_every_recipe() -> None:
    text = (RECIPES / "README.md").read_text()
    for name in ALL:
        assert name in text, name


def test_run_table_dry_run_and_summary(tmp_path: Path) -> None:
    script = RECIPES / "run_table.py"
    proc = subprocess.run(
        [sys.executable, str(script), "6", "--seeds", "2", "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" -> ") == 6  # 3 recipes x 2 seeds (now condattn table)
    # Fake two finished seeds of one recipe and summarise them.
    for seed, acc in ((0, 80.0), (1, 81.0)):
        d = tmp_path / "se_r_resnet50_aux_stage2" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(
            json.dumps(
                {"final": {"top1": acc, "top5": 95.0}, "val_chosen": {"top1": acc + 1, "epoch": 3}}
            )
        )
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "6",
            "--seeds",
            "2",
            "--summarize-only",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "table6.json").read_text())
    row = next(r for r in summary["rows"] if r["recipe"] == "se_r_resnet50_aux_stage2")
    assert row["n"] == 2 and row["mean"] == pytest.approx(80.5)
    assert row["std"] == pytest.approx(0.7071, abs=1e-3) and row["paper"] == 80.12
    assert row["val_chosen_mean"] == pytest.approx(81.5)
    md = (tmp_path / "table6.md").read_text()
    assert "80.50 ± 0.71" in md and "80.12" in md


def test_table11_alternative_reading_feeds_stages_3_and_4_only(configs: dict) -> None:
    """The aux model's T reaches layer3/layer4's SE blocks only, not layer1/layer2's."""
    import condattn
    from condattn.train.build import build_model

    name = "table11/se_r_resnet50_googlenet_lossw_03_stages34.toml"
    cfg = configs[name]
    model = cfg.model
    tiny = dataclasses.replace(cfg, model=dataclasses.replace(model, widths=(8, 8, 16, 16)))
    feeds = condattn.get_config(build_model(tiny, num_classes=10)).feeds["aux_model"]
    assert feeds and all(f.startswith(ALT_FEEDS) for f in feeds), feeds
    assert {f.split(".")[0] for f in feeds} == set(ALT_FEEDS)
    paper_reading = configs["table11/se_r_resnet50_googlenet_lossw_03.toml"]
    tiny = dataclasses.replace(
        paper_reading, model=dataclasses.replace(paper_reading.model, widths=(8, 8, 16, 16))
    )
    everything = condattn.get_config(build_model(tiny, num_classes=10)).feeds["aux_model"]
    assert len(everything) == 16 and set(feeds) < set(everything)
