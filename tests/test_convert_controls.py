"""The controls and extensions of Eq. 4: ``cond`` (features, shuffled), ``cond_mode="film"`` and
``cond_rank`` (condattn.transform.conds; docs/concepts.md, "Controls and extensions").

- zero init keeps the function, for every option, on the hypothesis backbones (all four module
  attention kinds and the inline SE; FiLM refuses the inline SE with its reason) and on timm's
  other attention types (FiLM where a type has a gate, its reason where not);
- with ``init="default"`` every new parameter gets a gradient;
- ``shuffled`` feeds each image the T of another one (checked against an eager oracle);
- ``features`` feeds the heads' hidden width; ``cond_rank`` adds exactly its parameters.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_all_params_have_grad, assert_close, randomize_batchnorm_
from hypothesis import given
from hypothesis import strategies as st
from strategies_backbones import AUX_HEAD, BackboneConfig, backbone_configs, build_backbone
from torch import nn

import condattn
from condattn import count_params
from condattn.nn import CondFilm, SqueezeExcite
from condattn.transform.conds import shuffle_batch
from condattn.transform.mappings import cond_types

OPTIONS = [
    {"cond": "features"},
    {"cond": "shuffled"},
    {"cond_mode": "film"},
    {"cond_rank": 3},
    {"cond": "features", "cond_rank": 2, "cond_mode": "film"},
    {"cond": "shuffled", "cond_rank": 4, "detach_cond": True},
]


def _convert(cfg: BackboneConfig, model: nn.Module, **kw):
    return condattn.convert(model, list(cfg.heads), aux_head=AUX_HEAD, **kw)


@given(cfg=backbone_configs(), option=st.sampled_from(OPTIONS))
def test_zero_init_keeps_the_function(cfg: BackboneConfig, option: dict) -> None:
    model = randomize_batchnorm_(build_backbone(cfg)).eval()
    what = f"convert({cfg}, **{option})"
    if option.get("cond_mode") == "film" and cfg.kind == "inline_se":
        with pytest.raises(condattn.ConversionError, match="written inline"):
            _convert(cfg, model, **option)
        return
    conv = _convert(cfg, model, init="zeros", **option).eval()
    assert condattn.get_config(conv).options() == {
        **condattn.ConvertConfig(aux_at=cfg.heads, aux_head=AUX_HEAD, **option).options(),
        "num_classes": cfg.num_classes,
        "feeds": condattn.get_config(conv).feeds,
    }
    torch.manual_seed(cfg.seed)
    x = torch.randn(cfg.x_shape)
    with torch.no_grad():
        assert_close(conv(x).logits, model(x), atol=1e-5, what=what)


@given(cfg=backbone_configs(max_stages=3), option=st.sampled_from(OPTIONS))
def test_every_new_parameter_gets_a_gradient(cfg: BackboneConfig, option: dict) -> None:
    if option.get("cond_mode") == "film" and cfg.kind == "inline_se":
        return
    conv = _convert(cfg, build_backbone(cfg).train(), init="default", **option)
    torch.manual_seed(cfg.seed)
    out = conv(torch.randn(cfg.x_shape))
    (out.logits.sum() + sum(t.sum() for t in out.aux_logits)).backward()
    new = [n for n, _ in conv.named_parameters() if "_proj" in n or ".film." in n]
    if option.get("cond_rank") or option.get("cond_mode"):
        assert new, f"{option}: no new parameters found"
    assert_all_params_have_grad(conv, what=f"{cfg} {option}, init=default", allow_zero=True)


# --- one tiny network, checked against an eager oracle -----------------------------------------


class Tiny(nn.Module):
    """stem -> s1 -> s2 (one SE) -> pool -> fc; the head goes after s1 and feeds s2's SE."""

    def __init__(self, n: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.s1 = nn.Conv2d(8, 8, 3, 2, 1)
        self.s2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.se = SqueezeExcite(16, r=4)
        self.fc = nn.Linear(16, n)

    def forward(self, x):
        x = F.relu(self.s1(F.relu(self.stem(x))))
        x = self.se(F.relu(self.s2(x)))
        return self.fc(x.mean((2, 3)))


def _t_seen(conv, x):
    """The T the SE twin receives, and the aux logits, for input ``x``."""
    seen = {}

    def hook(module, args):
        seen["t"] = args[1].detach().clone()

    twin = conv.get_submodule("se")
    handle = twin.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            out = conv(x)
    finally:
        handle.remove()
    return seen["t"], out.aux_logits[0]


def test_shuffled_feeds_another_images_result_in_train_and_eval():
    torch.manual_seed(0)
    conv = condattn.convert(Tiny(), ["s1"], cond="shuffled", aux_head=AUX_HEAD, init="default")
    x = torch.randn(2, 3, 16, 16)
    for mode in ("eval", "train"):
        getattr(conv, mode)()
        torch.manual_seed(1)
        t, logits = _t_seen(conv, x)
        assert torch.equal(t, logits[[1, 0]]), f"{mode}: T is not the other image's logits"
    # the gate of image 0 is the eager SE-R gate computed with image 1's T
    conv.eval()
    twin = conv.get_submodule("se")
    with torch.no_grad():
        feat = F.relu(conv.s2(F.relu(conv.s1(F.relu(conv.stem(x))))))
        logits = conv.aux1(F.relu(conv.s1(F.relu(conv.stem(x)))))
        z = feat.mean((2, 3))
        s0 = torch.sigmoid(twin.fc2(F.relu(twin.fc1(torch.cat([logits[1:2], z[0:1]], 1)))))
        assert_close(twin._scale(feat, logits[[1, 0]])[0, :, 0, 0], s0[0], what="oracle gate")
    assert torch.equal(shuffle_batch(torch.ones(1, 3)), torch.zeros(1, 3)), "batch of 1"


def test_features_feed_the_heads_hidden_width():
    conv = condattn.convert(Tiny(), ["s1"], cond="features", aux_head=AUX_HEAD).eval()
    t, logits = _t_seen(conv, torch.randn(3, 3, 16, 16))
    assert t.shape == (3, AUX_HEAD["hidden"]) and logits.shape == (3, 4)
    assert conv.get_submodule("se").cond_dim == AUX_HEAD["hidden"]


def test_cond_rank_adds_exactly_its_parameters():
    n, k, hidden_se = 4, 3, 16 // 4
    plain = condattn.convert(Tiny(n), ["s1"], aux_head=AUX_HEAD)
    full = condattn.convert(Tiny(n), ["s1"], aux_head=AUX_HEAD, conditioned=False)
    low = condattn.convert(Tiny(n), ["s1"], aux_head=AUX_HEAD, cond_rank=k)
    se_a = count_params(full)
    assert count_params(plain) - se_a == n * hidden_se  # T-columns of W1: n x C/r
    assert count_params(low) - se_a == n * k + k * hidden_se  # P: n x k, then k x C/r
    assert condattn.get_config(low).cond_rank == k
    assert low.get_submodule("aux1_proj").weight.shape == (k, n)


def test_film_twin_is_condfilm_and_round_trips(tmp_path):
    model = Tiny().eval()
    conv = condattn.convert(model, ["s1"], cond_mode="film", aux_head=AUX_HEAD, init="default")
    assert isinstance(conv.get_submodule("se"), CondFilm)
    assert CondFilm in cond_types(), "the swap table's twin types know CondFilm"
    path = condattn.save(conv, tmp_path / "film.pt")
    again = condattn.load(path, Tiny()).eval()
    x = torch.randn(2, 3, 16, 16)
    conv.eval()
    with torch.no_grad():
        assert_close(again(x).logits, conv(x).logits, what="film save/load", atol=1e-6)
    state = condattn.load_base_state_dict(
        condattn.convert(Tiny(), ["s1"], cond_mode="film", aux_head=AUX_HEAD), model.state_dict()
    )
    assert not state.missing_keys or all(k.startswith("aux1") for k in state.missing_keys)


def test_bad_options_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"cond must be one of.*shuffled"):
        condattn.convert(Tiny(), ["s1"], cond="shuffle")
    with pytest.raises(ValueError, match=r"cond_mode must be one of.*film"):
        condattn.convert(Tiny(), ["s1"], cond_mode="add")
    with pytest.raises(ValueError, match="cond_rank must be a positive int"):
        condattn.convert(Tiny(), ["s1"], cond_rank=0)
    with pytest.raises(TypeError, match="Did you mean 'cond_rank'"):
        condattn.convert(Tiny(), ["s1"], cond_rnak=3)


# --- timm's other attention types ---------------------------------------------------------------

timm = pytest.importorskip("timm")


@pytest.mark.parametrize(
    ("name", "kw", "aux_at", "film"),
    [
        ("resnet10t", {"block_args": {"attn_layer": "ceca"}}, ["layer2"], True),
        ("resnet10t", {"block_args": {"attn_layer": "cbam"}}, ["layer2"], True),
        ("resnet10t", {"block_args": {"attn_layer": "lcbam"}}, ["layer2"], "inline"),
        ("skresnet18", {}, ["layer2"], "softmax across kernel"),
        ("efficientnet_b0", {}, "auto", True),
    ],
)
def test_film_on_timm_types(name, kw, aux_at, film):
    torch.manual_seed(0)
    model = randomize_batchnorm_(timm.create_model(name, num_classes=5, **kw)).eval()
    if film is not True:
        with pytest.raises(condattn.ConversionError, match=film):
            condattn.convert(model, aux_at, cond_mode="film", aux_head=AUX_HEAD)
        return
    conv = condattn.convert(model, aux_at, cond_mode="film", aux_head=AUX_HEAD).eval()
    assert any(isinstance(m, CondFilm) for m in conv.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert_close(
            conv(x).logits,
            expected,
            atol=1e-4 * float(expected.abs().max()),
            rtol=0,
            what=f"{name} film, zero init",
        )
