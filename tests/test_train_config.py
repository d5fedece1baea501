"""Config: recipes, inheritance, --set overrides with type coercion, validation messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from condattn.train.config import PAPER_LOSS_W, ConfigError, TrainConfig
from condattn.train.recipe import apply_overrides, config_from_dict, config_to_toml, load_recipe

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_defaults_are_the_paper_recipe() -> None:
    cfg = config_from_dict({})
    o = cfg.optim
    assert (o.lr, o.momentum, o.nesterov, o.weight_decay) == (0.1, 0.9, True, 5e-4)
    assert (o.batch_size, o.epochs, o.warmup_epochs) == (128, 200, 1)
    assert (o.milestones, o.gamma) == ((60, 120, 160), 0.2)
    assert cfg.model.aux_dropout == 0.7 and cfg.model.r == 8
    assert cfg.model.cond_init == "default"
    assert cfg.loss.aux_weights == PAPER_LOSS_W[50]  # resolved from the depth of se_resnet50


@pytest.mark.parametrize(("depth", "weights"), sorted(PAPER_LOSS_W.items()))
def test_per_depth_loss_weights(depth: int, weights: tuple[float, float]) -> None:
    cfg = config_from_dict({"model": {"arch": f"se_resnet{depth}"}})
    assert cfg.loss.aux_weights == weights


def test_plain_variant_has_no_heads() -> None:
    cfg = config_from_dict({"model": {"variant": "se"}})
    assert cfg.model.aux_at == () and cfg.loss.aux_weights == () and cfg.num_heads == 0


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys in \[optim\]: lr, momentum"):
        config_from_dict({"optim": {"lrr": 0.1}})
    # system.fused_se was removed with the fused SE gate: it is an unknown key like any other
    with pytest.raises(ConfigError, match=r"system\.fused_se.*valid keys in \[system\]: seed"):
        config_from_dict({"system": {"fused_se": True}})
    with pytest.raises(ConfigError, match=r"unknown key 'system\.fused_se'; valid keys"):
        apply_overrides({}, ["system.fused_se=true"])
    with pytest.raises(ConfigError, match="unknown top-level key"):
        config_from_dict({"epochs": 3})


@pytest.mark.parametrize(
    ("section", "key", "value", "pattern"),
    [
        ("model", "variant", "se_x", r"choose one of: \('se', 'se_a', 'se_r'\)"),
        ("model", "cond_init", "ones", "choose one of"),
        ("model", "arch", "resnet7", "not a registered model; valid: .*se_resnet50"),
        ("system", "device", "tpu", "choose one of"),
        ("optim", "epochs", "many", "must be an integer"),
        ("optim", "lr", [1], "must be a number"),
        ("system", "deterministic", "maybe", "true or false"),
        ("system", "precision", "fp16", r"choose one of: \('auto', 'fp32', 'bf16'\)"),
        ("system", "bf16", "maybe", "system.precision='maybe' is not valid"),  # the old key
        ("system", "compile", "fast", "choose one of: .*max-autotune"),
        ("system", "channels_last", "yes", r"choose one of: \('auto', 'on', 'off'\)"),
    ],
)
def test_bad_values_are_refused(section: str, key: str, value: object, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict({section: {key: value}})


def test_weight_count_must_match_heads() -> None:
    with pytest.raises(ConfigError, match="has 1 entries but the model has 2 aux"):
        config_from_dict({"loss": {"aux_weights": [0.3]}})


def test_set_overrides_coerce_types() -> None:
    d = apply_overrides(
        {},
        [
            "optim.epochs=3",
            "lr=0.05",  # a bare key that only [optim] has
            "model.aux_at=layer1,layer3",
            "widths=[8, 16, 32, 64]",
            "system.bf16=true",
            "loss.aux_weights=[0.5, 0.25]",
            "data.max_angle=10",  # int -> float
            "name=my run",
        ],
    )
    cfg = config_from_dict(d)
    assert cfg.optim.epochs == 3 and isinstance(cfg.optim.epochs, int)
    assert cfg.optim.lr == 0.05
    assert cfg.model.aux_at == ("layer1", "layer3")
    assert cfg.model.widths == (8, 16, 32, 64)
    assert cfg.system.precision == "bf16"  # system.bf16 is the old spelling of precision
    assert cfg.loss.aux_weights == (0.5, 0.25)
    assert cfg.data.max_angle == 10.0 and isinstance(cfg.data.max_angle, float)
    assert cfg.name == "my run"


def test_set_refuses_unknown_and_ambiguous_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrate'.*lr, momentum"):
        apply_overrides({}, ["optim.lrate=1"])
    with pytest.raises(ConfigError, match=r"'nope' is unknown; valid keys: .*optim\.lr"):
        apply_overrides({}, ["nope=1"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match="unknown section"):
        apply_overrides({}, ["optimizer.lr=1"])


def test_unknown_recipe_lists_recipes() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe.*quick\.toml.*table3/se_r_resnet50"):
        load_recipe(RECIPES / "table3" / "se_r_resnet500.toml")


def test_inheritance_and_cycles(tmp_path: Path) -> None:
    a = "[optim]\nepochs = 7\nmilestones = [0.5]\nlr = 0.2\n[model]\nr = 16\n"
    (tmp_path / "a.toml").write_text(a)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.toml").write_text('base = "../a.toml"\n[optim]\nlr = 0.3\n')
    cfg = load_recipe(tmp_path / "sub" / "b.toml", ["model.r=4"])
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.model.r, cfg.name) == (7, 0.3, 4, "b")
    (tmp_path / "c.toml").write_text('base = "d.toml"\n')
    (tmp_path / "d.toml").write_text('base = "c.toml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "c.toml")
    (tmp_path / "e.toml").write_text('base = "missing.toml"\n')
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "e.toml")


def test_toml_round_trip() -> None:
    cfg = load_recipe(RECIPES / "quick.toml", ["system.seed=3"])
    again = config_from_dict(tomllib.loads(config_to_toml(cfg)))
    assert again == cfg


def test_config_is_frozen() -> None:
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"  # type: ignore[misc]


def test_aux_head_sizes_reach_the_heads_and_bad_ones_are_refused() -> None:
    from condattn.nn import AuxHead
    from condattn.train import config as C
    from condattn.train.build import build_model
    from condattn.transform.convert import AUX_HEAD_KEYS

    assert C.AUX_HEAD_KEYS == AUX_HEAD_KEYS  # the config checks what convert takes
    sets = ["model.widths=[8,16,32,64]", "model.aux_head.width=16", "model.aux_head.hidden=64"]
    cfg = load_recipe(RECIPES / "quick.toml", sets)
    assert cfg.model.aux_head == {"width": 16, "hidden": 64}
    heads = [m for m in build_model(cfg, num_classes=10).modules() if isinstance(m, AuxHead)]
    assert len(heads) == 2
    assert all(h.conv.out_channels == 16 and h.fc1.out_features == 64 for h in heads)
    assert "aux_head" in config_to_toml(cfg)
    assert load_recipe(RECIPES / "quick.toml", [*sets, "model.variant=se"]).model.aux_head == {}
    with pytest.raises(ConfigError, match=r"model\.aux_head\.depth is unknown; valid: pool_size"):
        load_recipe(RECIPES / "quick.toml", ["model.aux_head.depth=2"])
    with pytest.raises(ConfigError, match=r"model\.aux_head\.width must be a positive integer"):
        load_recipe(RECIPES / "quick.toml", ["model.aux_head.width=0"])
