"""Training runs on ``timm:NAME`` / ``torchvision:NAME`` models: config, build_model and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from condattn.cli import main
from condattn.models import register_model
from condattn.models import registry as registry_module
from condattn.nn import SqueezeExcite
from condattn.train.build import build_model
from condattn.train.config import ConfigError
from condattn.train.recipe import config_from_dict, config_to_toml, load_recipe
from condattn.transform.convert import get_config

pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "recipes" / "quick.toml")
# quick.toml with its zoo-only widths cleared, so that any arch fits
EXTERNAL = ["model.widths="]
# a narrow timm SE-ResNet18: its own channel options, passed through [model.kwargs]
TINY_TIMM = "model.kwargs={channels = [8, 16, 32, 64]}"


def _cfg(*overrides: str):
    return load_recipe(QUICK, [*EXTERNAL, *overrides])


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _n_aux(model: nn.Module) -> int:
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    return len(out.aux_logits) if isinstance(out, tuple) else 0


# --- config ----------------------------------------------------------------------------------


def test_model_kwargs_from_a_table_and_from_dotted_overrides() -> None:
    cfg = _cfg("model.arch=timm:seresnet18", "model.kwargs={drop_rate = 0.1}")
    assert cfg.model.kwargs == {"drop_rate": 0.1}
    cfg = _cfg("model.arch=timm:seresnet18", TINY_TIMM, "model.kwargs.drop_rate=0.2")
    assert cfg.model.kwargs == {"channels": [8, 16, 32, 64], "drop_rate": 0.2}


def test_config_with_kwargs_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = _cfg("model.arch=timm:seresnet18", TINY_TIMM, "model.aux_at=auto")
    path = tmp_path / "run.toml"
    path.write_text(config_to_toml(cfg))
    again = load_recipe(path)
    assert again == cfg
    assert again.to_dict()["model"]["kwargs"] == {"channels": [8, 16, 32, 64]}


def test_aux_at_auto_is_two_heads_with_default_weights() -> None:
    cfg = _cfg("model.arch=timm:seresnet18", "model.aux_at=auto")
    assert cfg.model.auto_aux_at and cfg.num_heads == 2
    assert len(cfg.loss.aux_weights) == 2
    with pytest.raises(ConfigError, match=r'"auto" or a list of module names'):
        _cfg("model.aux_at=auto,layer3")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.arch=timm:seresnet181"], r"model\.arch: unknown timm model .*timm:seresnet18"),
        (["model.arch=torchvision:resnt18"], r"close matches: torchvision:resnet18"),
        (["model.arch=hub:resnet18"], r"unknown model source 'hub'.*timm, torchvision"),
        (
            ["model.arch=timm:seresnet18", "model.widths=[8,16,32,64]"],
            r"model\.widths and model\.r",
        ),
        (["model.arch=timm:seresnet18", "model.r=4"], r"CIFAR zoo only.*\[model\.kwargs\]"),
        (["model.kwargs.pretrained=true"], r"model\.kwargs\.pretrained cannot be set"),
        (["model.kwargs.num_classes=10"], r"model\.kwargs\.num_classes .*from the data"),
        (["model.kwargs=3"], r"model\.kwargs must be a table"),
        (["model.r.x=1"], r"model\.r is not a table"),
    ],
)
def test_config_errors_name_the_key_and_the_valid_choice(overrides, match) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        _cfg(*overrides)
    assert "\n" not in str(err.value)


def test_zoo_keys_stay_valid_for_zoo_models() -> None:
    cfg = config_from_dict({"model": {"arch": "se_resnet18", "widths": [8, 16, 32, 64], "r": 4}})
    assert (cfg.model.r, cfg.model.kwargs) == (4, {})


# --- build_model -----------------------------------------------------------------------------


def test_build_model_passes_kwargs_and_the_data_classes_to_timm() -> None:
    cfg = _cfg("model.arch=timm:seresnet18", "model.variant=se", TINY_TIMM)
    net = build_model(cfg, num_classes=7)
    assert net.fc.out_features == 7 and net.fc.in_features == 64
    assert net.layer1[0].conv1.out_channels == 8


def test_se_on_a_model_without_attention_is_the_plain_baseline() -> None:
    cfg = _cfg("model.arch=torchvision:resnet18", "model.variant=se")
    net = build_model(cfg, num_classes=10)
    assert type(net).__module__.startswith("torchvision") and net.fc.out_features == 10
    assert _n_aux(net) == 0


def test_se_a_on_a_model_without_attention_adds_the_heads() -> None:
    cfg = _cfg("model.arch=torchvision:resnet18", "model.variant=se_a")
    assert _n_aux(build_model(cfg, num_classes=10)) == 2


def test_se_r_on_a_model_without_attention_says_there_is_nothing_to_condition() -> None:
    cfg = _cfg("model.arch=torchvision:resnet18", "model.variant=se_r")
    with pytest.raises(ConfigError, match="nothing to condition") as err:
        build_model(cfg, num_classes=10)
    msg = str(err.value)
    assert "\n" not in msg
    for hint in ("torchvision:resnet18", "timm.SEModule", "SqueezeExcitation", "'se_a'"):
        assert hint in msg, f"{hint!r} missing from: {msg}"


def test_se_r_on_timm_conditions_its_se_blocks() -> None:
    cfg = _cfg("model.arch=timm:seresnet18", "model.aux_at=layer2,layer3", TINY_TIMM)
    net = build_model(cfg, num_classes=10)
    # layer3's SE is fed by the head after layer2: its first map takes [T; z] (Eq. 4)
    assert net.get_submodule("layer3.0.se.fc1").weight.shape == (8, 32 + 10)
    assert _n_aux(net) == 2


def test_se_r_on_torchvision_mobilenet_v3_small() -> None:
    cfg = _cfg("model.arch=torchvision:mobilenet_v3_small", "model.aux_at=features.3,features.8")
    assert _n_aux(build_model(cfg, num_classes=10)) == 2


def test_aux_at_auto_places_the_papers_two_heads_on_timm() -> None:
    cfg = _cfg("model.arch=timm:seresnet18", "model.aux_at=auto", TINY_TIMM)
    net = build_model(cfg, num_classes=10)
    assert get_config(net).aux_at == ("layer2", "layer3")
    assert _n_aux(net) == 2


class _LateAttentionNet(nn.Module):
    """Four stride stages with attention only after the last: "auto" places a single head."""

    def __init__(self, *, num_classes: int = 10, r: int = 2) -> None:
        super().__init__()
        convs = [nn.Conv2d(3, 8, 3, 1, 1)] + [nn.Conv2d(8, 8, 3, s, 1) for s in (1, 2, 2, 2)]
        self.stem, self.layer1, self.layer2, self.layer3, self.layer4 = convs
        self.se = SqueezeExcite(8, r=r)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (self.stem, self.layer1, self.layer2, self.layer3, self.layer4):
            x = torch.relu(stage(x))
        return self.fc(self.se(x).mean((2, 3)))


def test_aux_at_auto_with_another_head_count_than_the_config_is_an_error(monkeypatch) -> None:
    monkeypatch.setattr(registry_module, "_MODELS", dict(registry_module._MODELS))
    register_model("late_attention_net")(_LateAttentionNet)
    cfg = load_recipe(QUICK, [*EXTERNAL, "model.arch=late_attention_net", "model.aux_at=auto"])
    with pytest.raises(ConfigError, match=r"placed 1 head\(s\).*\['layer3'\].*list model\.aux_at"):
        build_model(cfg, num_classes=10)
    cfg = load_recipe(
        QUICK, [*EXTERNAL, "model.arch=late_attention_net", "aux_at=layer3", "aux_weights=[0.3]"]
    )
    assert _n_aux(build_model(cfg, num_classes=10)) == 1


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_trains_timm_se_r_one_epoch_on_synthetic_data(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    sets = [
        *EXTERNAL,
        "model.arch=timm:seresnet18",
        "model.variant=se_r",
        "model.aux_at=auto",
        TINY_TIMM,
        "optim.epochs=1",
        "optim.batch_size=64",
        "data.synthetic_train=128",
        "data.synthetic_test=64",
        "data.train_subset=0",
        "system.threads=1",
        "system.progress=off",
    ]
    assert main(["train", QUICK, "--synthetic", "--out", str(out), *_sets(sets)]) == 0
    capsys.readouterr()
    res = json.loads((out / "results.json").read_text())
    assert res["final"]["epoch"] == 1 and 0.0 <= res["final"]["top1"] <= 100.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and len(rows[0]["aux_losses"]) == 2
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["arch"] == "timm:seresnet18" and model["kwargs"] == {"channels": [8, 16, 32, 64]}
    assert model["aux_at"] == ["auto"]
    # eval rebuilds the same model from the checkpoint's config and reproduces the test numbers
    assert main(["eval", str(out / "checkpoint.pt"), "--synthetic"]) == 0
    assert json.loads(capsys.readouterr().out)["test_top1"] == pytest.approx(rows[0]["test_top1"])
