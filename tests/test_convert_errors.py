"""Every user error of ``condattn.convert`` / ``save`` / ``load`` / ``register_attention``, and
what its message tells the user (the valid choices, the module at fault, the option that helps).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn

import condattn
from condattn import ConversionError
from condattn.models import create_model
from condattn.nn import CondSqueezeExcite, SqueezeExcite

N = 10


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return create_model("se_resnet18", num_classes=N, widths=(8, 8, 16, 16))


def test_conversion_error_is_a_value_error() -> None:
    assert issubclass(ConversionError, ValueError)


# --- aux_at -------------------------------------------------------------------------------------


def test_unknown_aux_at_lists_valid_choices_and_a_close_match(model) -> None:
    with pytest.raises(ConversionError) as info:
        condattn.convert(model, ["layr3"])
    msg = str(info.value)
    assert "unknown aux_at stage 'layr3'" in msg
    assert "Did you mean 'layer3'" in msg
    assert "Valid choices: stem.0, " in msg and "layer1.0.attn" in msg
    assert "condattn.list_stages(model)" in msg


def test_unknown_aux_at_in_a_big_model_truncates_the_list(model) -> None:
    with pytest.raises(ConversionError, match=r"\.\.\. \(\d+ in all\)"):
        condattn.convert(model, ["nope"])


def test_aux_at_must_be_a_module_with_a_4d_output(model) -> None:
    with pytest.raises(ConversionError, match="unknown aux_at stage 'fc'"):
        condattn.convert(model, ["fc"])


def test_aux_at_with_no_attention_after_it(model) -> None:
    with pytest.raises(ConversionError) as info:
        condattn.convert(model, ["layer2", "layer4"])
    msg = str(info.value)
    assert "aux head at 'layer4' has no attention module after it to condition" in msg
    assert "conditioned=False" in msg and "register_attention" in msg
    # ... which SE-A allows
    condattn.convert(model, ["layer2", "layer4"], conditioned=False)


def test_aux_at_out_of_network_order(model) -> None:
    with pytest.raises(ConversionError, match=re.escape("in network order: ['layer2', 'layer3']")):
        condattn.convert(model, ["layer3", "layer2"])


@pytest.mark.parametrize(
    ("aux_at", "error", "match"),
    [
        ([], ValueError, "at least one aux_at stage, or an aux_model="),
        (["layer2", "layer2"], ValueError, "aux_at has duplicates"),
        ([2], TypeError, "aux_at must be a list of module names"),
    ],
)
def test_bad_aux_at_values(model, aux_at, error, match) -> None:
    with pytest.raises(error, match=match):
        condattn.convert(model, aux_at)


def test_aux_at_may_be_a_single_string(model) -> None:
    assert condattn.get_config(condattn.convert(model, "layer3")).aux_at == ("layer3",)


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (
            {"cond": "softmax"},
            ValueError,
            r"cond must be one of \('logits', 'probs', 'features', 'shuffled'\), got 'softmax'",
        ),
        ({"init": "xavier"}, ValueError, r"init must be one of \('zeros', 'default'\)"),
        ({"aux_dropout": 1.0}, ValueError, r"aux_dropout must be in \[0, 1\), got 1.0"),
        ({"aux_dropout": -0.1}, ValueError, r"aux_dropout must be in \[0, 1\)"),
        ({"num_classes": 0}, ValueError, "num_classes must be a positive int, got 0"),
        ({"num_classes": 2.5}, ValueError, "num_classes must be a positive int"),
        ({"aux_model": "googlenet"}, TypeError, "aux_model must be an nn.Module, got str"),
        ({"aux_head": {"depth": 3}}, ValueError, "aux_head takes pool_size, width, hidden"),
    ],
)
def test_bad_options(model, kw, error, match) -> None:
    with pytest.raises(error, match=match):
        condattn.convert(model, ["layer2"], **kw)


# --- feeds= -------------------------------------------------------------------------------------


def test_feeds_a_head_cannot_feed_attention_before_it(model) -> None:
    with pytest.raises(ConversionError) as info:
        condattn.convert(model, ["layer2"], feeds={"layer2": ["layer1"]})
    msg = str(info.value)
    assert "head 'layer2' cannot feed 'layer1.0.attn'" in msg
    assert "runs before the head's output exists" in msg


def test_feeds_names_an_unknown_head(model) -> None:
    with pytest.raises(ConversionError, match=r"feeds names heads \['layer3'\] that are not in"):
        condattn.convert(model, ["layer2"], feeds={"layer3": ["layer4"]})


def test_feeds_names_unknown_attention(model) -> None:
    with pytest.raises(ConversionError) as info:
        condattn.convert(model, ["layer2"], feeds={"layer2": ["layer9"]})
    msg = str(info.value)
    assert "unknown attention module 'layer9'" in msg
    assert "layer4.1.attn" in msg and "condattn.list_attention(model)" in msg


def test_feeds_two_heads_for_one_attention(model) -> None:
    with pytest.raises(ConversionError, match=r"'layer4\.0\.attn' is fed by two heads"):
        condattn.convert(
            model, ["layer2", "layer3"], feeds={"layer2": ["layer4"], "layer3": ["layer4"]}
        )


# --- models that cannot be converted -----------------------------------------------------------


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # data-dependent Python control flow: fx cannot trace it
            return self.conv(x)
        return x


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), DataDependent())
        self.se = SqueezeExcite(8, r=2)
        self.fc = nn.Linear(8, N)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.se(self.body(self.stem(x))).mean((2, 3)))


def test_untraceable_model_names_the_module_and_the_fixes() -> None:
    with pytest.raises(ConversionError) as info:
        condattn.convert(Untraceable(), ["stem"])
    msg = str(info.value)
    assert "could not trace the model: in module 'body.1' (DataDependent)" in msg
    assert "leaf_modules=['body.1']" in msg
    assert "concrete_args=" in msg
    assert isinstance(info.value.__cause__, Exception)


def test_untraceable_model_converts_with_leaf_modules() -> None:
    model = Untraceable().eval()
    for leaf in ("body.1", DataDependent):
        conv = condattn.convert(model, ["stem"], leaf_modules=[leaf]).eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(conv(x).logits, model(x), atol=1e-6)


class RootControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.se = SqueezeExcite(8, r=2)
        self.fc = nn.Linear(8, N)

    def forward(self, x: Tensor, flag: bool = False) -> Tensor:
        if flag:
            return x
        return self.fc(self.se(self.a(x)).mean((2, 3)))


def test_untraceable_root_suggests_concrete_args_not_an_empty_leaf() -> None:
    with pytest.raises(ConversionError) as info:
        condattn.convert(RootControlFlow(), ["a"])
    msg = str(info.value)
    assert "in module '<root>' (RootControlFlow)" in msg
    assert "leaf_modules=['']" not in msg
    assert "concrete_args=" in msg
    condattn.convert(RootControlFlow(), ["a"], concrete_args={"flag": False})


class ReturnsMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.se = SqueezeExcite(8, r=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.se(self.a(x))


class ReturnsTuple(ReturnsMap):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, N)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.se(self.a(x))
        return self.fc(f.mean((2, 3))), f


@pytest.mark.parametrize("cls", [ReturnsMap, ReturnsTuple])
def test_num_classes_cannot_be_inferred(cls) -> None:
    with pytest.raises(ConversionError) as info:
        condattn.convert(cls(), ["a"])
    msg = str(info.value)
    assert "must return one (batch, num_classes) tensor of logits" in msg
    assert "Wrap it so that forward returns the logits only" in msg


def test_bad_example_input_says_so() -> None:
    with pytest.raises(ConversionError, match=r"example input of shape \(1, 3, 2, 2\) failed"):
        condattn.convert(ReturnsTuple(), ["a"], example_input=torch.zeros(1, 3, 2, 2))


# --- converting twice ---------------------------------------------------------------------------


def test_converting_a_converted_model(model) -> None:
    conv = condattn.convert(model, ["layer2"])
    with pytest.raises(ConversionError, match=r"already converted.*condattn\.load"):
        condattn.convert(conv, ["layer2"])


def test_converting_a_model_with_cond_modules(model) -> None:
    import copy

    mixed = copy.deepcopy(model)
    mixed.layer4[1].attn = CondSqueezeExcite.from_module(mixed.layer4[1].attn, cond_dim=N)
    with pytest.raises(ConversionError) as info:
        condattn.convert(mixed, ["layer2"])
    assert "already contains a condattn CondSqueezeExcite at 'layer4.1.attn'" in str(info.value)


def test_get_config_of_a_plain_model(model) -> None:
    with pytest.raises(ValueError, match=r"not made by condattn\.convert"):
        condattn.get_config(model)
    with pytest.raises(ValueError, match=r"not made by condattn\.convert"):
        condattn.save(model, "/nonexistent/never-written.pt")


# --- register_attention -------------------------------------------------------------------------


def test_register_attention_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="SqueezeExcite is already registered"):
        condattn.register_attention(SqueezeExcite, CondSqueezeExcite)


def test_register_attention_refuses_a_duplicate_user_type() -> None:
    class MyAttn(nn.Module):
        pass

    condattn.register_attention(MyAttn, CondSqueezeExcite.from_module)
    try:
        with pytest.raises(ValueError, match="MyAttn is already registered"):
            condattn.register_attention(MyAttn, CondSqueezeExcite.from_module)
    finally:
        condattn.unregister_attention(MyAttn)
    with pytest.raises(KeyError, match="was not added by register_attention"):
        condattn.unregister_attention(MyAttn)


@pytest.mark.parametrize(
    ("src", "cond", "error", "match"),
    [
        (int, CondSqueezeExcite, TypeError, "src_type must be an nn.Module subclass"),
        (nn.Identity, 42, TypeError, "cond_type must be a class with from_module or a callable"),
    ],
)
def test_register_attention_bad_arguments(src, cond, error, match) -> None:
    with pytest.raises(error, match=match):
        condattn.register_attention(src, cond)
    assert src not in condattn.get_attention_mapping()


def test_builtin_types_cannot_be_unregistered() -> None:
    with pytest.raises(KeyError):
        condattn.unregister_attention(SqueezeExcite)


# --- load ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda p, m: torch.save(m.state_dict(), p), id="plain state_dict"),
        pytest.param(lambda p, m: torch.save({"format": "other"}, p), id="other format"),
        pytest.param(lambda p, m: torch.save(m, p), id="pickled module"),
        pytest.param(lambda p, m: p.write_text("not a checkpoint"), id="text file"),
    ],
)
def test_load_of_a_non_condattn_file(tmp_path, model, payload) -> None:
    path = tmp_path / "file.pt"
    payload(path, model)
    with pytest.raises(ValueError, match="is not a condattn checkpoint"):
        condattn.load(path, model)


def test_load_of_a_missing_file(tmp_path, model) -> None:
    with pytest.raises(FileNotFoundError):
        condattn.load(tmp_path / "missing.pt", model)


def test_load_into_another_architecture(tmp_path, model) -> None:
    path = condattn.save(condattn.convert(model, ["layer2"]), tmp_path / "c.pt")
    other = create_model("se_resnet18", num_classes=N, widths=(8, 8, 16, 32))
    with pytest.raises(RuntimeError, match="size mismatch"):
        condattn.load(path, other)


def test_register_attention_refuses_a_builder_without_channels() -> None:
    class MyAttn(nn.Module):
        pass

    def old_builder(src, *, cond_dim, init="zeros"):
        return CondSqueezeExcite(8, cond_dim=cond_dim)

    with pytest.raises(TypeError, match=r"must accept the keyword arguments.*it lacks channels"):
        condattn.register_attention(MyAttn, old_builder)
    assert MyAttn not in condattn.get_attention_mapping()


def test_convert_takes_a_custom_mapping(model) -> None:
    """``mapping=`` replaces the table: with an empty one nothing is swappable."""
    with pytest.raises(ConversionError, match="no attention module after it"):
        condattn.convert(model, ["layer2"], mapping={})
    with pytest.raises(TypeError, match=r"mapping keys must be nn\.Module subclasses"):
        condattn.convert(model, ["layer2"], mapping={"se": CondSqueezeExcite})
    with pytest.raises(TypeError, match="cond_type must be a class with from_module"):
        condattn.convert(model, ["layer2"], mapping={SqueezeExcite: 3})


def test_cond_types_are_read_from_the_table() -> None:
    from condattn.nn import CondCbam, CondFilm, CondLinear
    from condattn.transform.mappings import builds, cond_types

    @builds(CondCbam)
    def build(src, *, channels, cond_dim, init):
        raise AssertionError("not called")

    assert cond_types({SqueezeExcite: CondSqueezeExcite}) == (
        CondLinear,
        CondFilm,  # every type's twin under cond_mode="film"
        CondSqueezeExcite,
    )
    assert set(cond_types({SqueezeExcite: build})) == {CondLinear, CondFilm, CondCbam}
    assert CondSqueezeExcite in cond_types()
