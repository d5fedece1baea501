"""Named variants in ``compare``: a recipe's ``[variants.NAME]`` tables (issue 20).

The controls of SE-R (``cond = "shuffled"`` and ``"features"``) run as named variants beside
se_a and se_r, paired by seed, and compare.md groups the three differences that say why SE-R
helps (or not): SE-R − SE-A, SE-R − shuffled, SE-R − features.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from condattn.cli import main
from condattn.experiments import CompareError, parse_variants, plan_grid
from condattn.train.config import ConfigError
from condattn.train.variants import named_variants

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.widths=[8,16,16,32]",
    "model.aux_head={pool_size=2, width=8, hidden=16}",
    "data.synthetic_train=128",
    "data.synthetic_test=64",
    "optim.batch_size=64",
    "optim.epochs=1",
    "optim.milestones=[]",
    "system.threads=1",
]
CONTROLS = """
[variants.se_r_shuffled]
base = "se_r"
model.cond = "shuffled"

[variants.se_r_features]
base = "se_r"
model.cond = "features"
"""


def _recipe(tmp_path: Path, extra: str = CONTROLS) -> Path:
    path = tmp_path / "controls.toml"
    path.write_text(f'base = "{REPO / "recipes" / "quick.toml"}"\nname = "controls"\n{extra}')
    return path


def test_named_variants_are_read_and_planned(tmp_path):
    recipe = _recipe(tmp_path)
    named = named_variants(recipe)
    assert set(named) == {"se_r_shuffled", "se_r_features"}
    assert named["se_r_shuffled"].base == "se_r"
    assert named["se_r_shuffled"].overrides == ('model.cond="shuffled"',)
    assert parse_variants("se_a,se_r,se_r_shuffled", recipe) == ("se_a", "se_r", "se_r_shuffled")
    with pytest.raises(CompareError, match="se_r_features"):
        parse_variants("se_r,se_r_shufled", recipe)  # the error lists the valid names
    runs = plan_grid(recipe, variants=["se_r", "se_r_features"], seeds=[0], out_dir=tmp_path)
    by = {r.variant: r for r in runs}
    assert by["se_r_features"].cfg.model.variant == "se_r"
    assert by["se_r_features"].cfg.model.cond == "features"
    assert by["se_r"].cfg.model.cond == "logits"
    assert by["se_r_features"].run_dir == tmp_path / "se_r_features" / "seed0"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[variants.se_r]\nbase = "se_r"\nmodel.cond = "probs"', "must be new"),
        ('[variants.x]\nbase = "sr"\nmodel.cond = "probs"', "needs base = one of"),
        ('[variants.x]\nbase = "se_r"', "changes nothing"),
        ('[variants.x]\nbase = "se_r"\nmodel.variant = "se_a"', "its base sets model.variant"),
    ],
)
def test_bad_variant_tables_are_refused_with_the_fix(tmp_path, table, message):
    with pytest.raises(ConfigError, match=message):
        named_variants(_recipe(tmp_path, table))


def test_a_bad_key_in_a_variant_fails_when_planned(tmp_path):
    recipe = _recipe(tmp_path, '[variants.x]\nbase = "se_r"\nmodel.cnd = "probs"')
    with pytest.raises(ConfigError, match=r"model\.cnd"):
        plan_grid(recipe, variants=["x"], seeds=[0], out_dir=tmp_path)


def test_compare_of_the_controls_groups_the_three_questions(tmp_path, capsys):
    """Issue 20's acceptance: se_a, se_r and both controls, end to end on synthetic data."""
    out = tmp_path / "cmp"
    variants = "se_a,se_r,se_r_shuffled,se_r_features"
    argv = ["compare", str(_recipe(tmp_path)), "--variants", variants, "--seeds", "0"]
    argv += ["--synthetic", "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    assert main(argv) == 0
    md = (out / "compare.md").read_text()
    for row in (
        "| SE-R − SE-A | does the result help beyond the heads? |",
        "| SE-R − se_r_shuffled | does it have to be this image's result? |",
        "| SE-R − se_r_features | is the result better than richer information? |",
    ):
        assert row in md, md
    summary = json.loads((out / "compare.json").read_text())
    pairs = {(d["a"], d["b"]): d["n_pairs"] for d in summary["differences"]}
    assert pairs == {
        ("se_r", "se_a"): 1,
        ("se_r", "se_r_shuffled"): 1,
        ("se_r", "se_r_features"): 1,
    }
    cfg = json.loads((out / "se_r_shuffled" / "seed0" / "config.json").read_text())
    assert (cfg["model"]["variant"], cfg["model"]["cond"]) == ("se_r", "shuffled")
    capsys.readouterr()
    assert main(["report", str(out)]) == 0  # the grid is found again from its folders
    assert "se_r_features" in (out / "compare.md").read_text()
