"""``[model] add_attention``: a recipe on a plain CNN (torchvision's ResNet-18) trains through
the CLI, and ``compare`` runs se / se_a / se_r on it (synthetic data, test-sized)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from condattn.cli import main
from condattn.nn import CondSqueezeExcite, SqueezeExcite
from condattn.train.build import build_model
from condattn.train.config import ConfigError
from condattn.train.recipe import load_recipe
from condattn.transform.add_attention import get_added

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
PLAIN = ["model.widths=", "model.arch=torchvision:resnet18", "model.add_attention=se"]
SMALL = [
    "optim.epochs=1",
    "optim.batch_size=32",
    "optim.milestones=[]",
    "data.synthetic_train=64",
    "data.synthetic_test=32",
    "data.train_subset=0",
    "system.threads=1",
    "system.progress=off",
]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_every_variant_builds_on_the_added_attention() -> None:
    # se_r: the heads after layer2 and layer3 condition the SE of layer3 and layer4
    for variant, twins in (("se", 0), ("se_a", 0), ("se_r", 4)):
        cfg = load_recipe(QUICK, [*PLAIN, f"model.variant={variant}", "model.aux_at=auto"])
        net = build_model(cfg, num_classes=10)
        plain = [m for m in net.modules() if type(m) is SqueezeExcite]
        conds = [m for m in net.modules() if isinstance(m, CondSqueezeExcite)]
        assert len(plain) + len(conds) == 8 and len(conds) == twins, variant
        if variant == "se":
            assert len(get_added(net)) == 8


def test_add_attention_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="'se', 'eca', 'cbam', 'coord'"):
        load_recipe(QUICK, [*PLAIN[:2], "model.add_attention=gc"])
    with pytest.raises(ConfigError, match=r"model\.r configure"):
        load_recipe(QUICK, [*PLAIN[:2], "model.r=4"])  # r without add_attention: refused
    at = ["model.r=4", 'model.add_attention_at=["layer4"]', "model.variant=se"]
    cfg = load_recipe(QUICK, [*PLAIN, *at])
    net = build_model(cfg, num_classes=10)
    assert [m.fc1.out_features for m in net.modules() if isinstance(m, SqueezeExcite)] == [
        128,
        128,
    ]


@pytest.mark.slow  # three one-epoch ResNet-18 runs and one more: about 40 s alone, more shared
def test_cli_trains_and_compares_se_variants_on_a_plain_resnet18(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    sets = [*PLAIN, "model.variant=se_r", "model.aux_at=auto", *SMALL]
    assert main(["train", QUICK, "--synthetic", "--out", str(run), *_sets(sets)]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["final"]["epoch"] == 1
    assert json.loads((run / "config.json").read_text())["model"]["add_attention"] == "se"
    cmp = tmp_path / "cmp"
    argv = ["compare", QUICK, "--variants", "se,se_a,se_r", "--seeds", "0", "--synthetic"]
    sets = [*PLAIN, "model.aux_at=auto", *SMALL]
    assert main([*argv, "--out", str(cmp), *_sets(sets)]) == 0
    capsys.readouterr()
    summary = json.loads((cmp / "compare.json").read_text())
    assert list(summary["variants"]) == ["se", "se_a", "se_r"] and not summary["missing"]
