"""Property tests of ``condattn.convert`` on random tiny backbones (``strategies_backbones``).

Each example draws a backbone (2-4 stages, widths 4-16, basic or bottleneck blocks, SE / CBAM /
coordinate / ECA attention modules or an inline SE) and 1-2 heads at valid positions, then checks
what must hold for every such model:

- the output is a ``CondOutput`` of the right shapes in train and eval mode;
- with ``init="zeros"`` the conversion computes the original function (eval mode);
- the routing and the parameter count match their closed forms (``expected_fed``,
  ``expected_param_delta``), for SE-R and SE-A;
- the batch axis is untouched: permuting the batch permutes every output;
- with ``init="default"`` in train mode every parameter receives a gradient (timm's fx test);
- ``save`` / ``load`` round-trips exactly.

The number of examples comes from the hypothesis profile (``HYPOTHESIS_PROFILE``, see
``conftest.py``): 15 by default, about 0.1 s each; ``thorough`` runs 200 to hunt.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from helpers import (
    assert_all_params_have_grad,
    assert_close,
    assert_shape,
    randomize_batchnorm_,
)
from hypothesis import given
from strategies_backbones import (
    AUX_HEAD,
    BackboneConfig,
    backbone_configs,
    build_backbone,
    expected_fed,
    expected_param_delta,
)

import condattn
from condattn import CondOutput, count_params
from condattn.transform.mappings import cond_types


def _convert(cfg: BackboneConfig, model: torch.nn.Module, **kw) -> torch.fx.GraphModule:
    return condattn.convert(model, list(cfg.heads), aux_head=AUX_HEAD, **kw)


def _what(cfg: BackboneConfig, detail: str) -> str:
    return f"convert({cfg}, aux_head={AUX_HEAD}): {detail}"


def _outputs(out: CondOutput) -> list[torch.Tensor]:
    return [out.logits, *out.aux_logits]


@given(cfg=backbone_configs())
def test_eval_shapes_function_routing_params_and_batch_permutation(cfg: BackboneConfig) -> None:
    model = randomize_batchnorm_(build_backbone(cfg)).eval()
    conv = _convert(cfg, model)
    n, b = cfg.num_classes, cfg.batch

    # routing and the closed-form parameter delta
    assert condattn.get_config(conv).feeds == expected_fed(cfg), _what(cfg, "routing")
    assert count_params(conv) - count_params(model) == expected_param_delta(cfg), _what(
        cfg, "parameter delta"
    )
    fed = {a for atts in expected_fed(cfg).values() for a in atts}
    swapped = {name for name, m in conv.named_modules() if isinstance(m, cond_types())}
    assert swapped == fed, _what(cfg, "swapped modules")

    # types and shapes, function preservation
    torch.manual_seed(cfg.seed)
    x = torch.randn(cfg.x_shape)
    with torch.no_grad():
        out = conv(x)
        expected = model(x)
    assert type(out) is CondOutput, _what(cfg, f"returned {type(out).__name__}")
    assert len(out.aux_logits) == len(cfg.heads), _what(cfg, "number of aux logits")
    for i, t in enumerate(_outputs(out)):
        assert_shape(t, (b, n), what=_what(cfg, f"output {i}"))
    assert_close(out.logits, expected, atol=1e-5, what=_what(cfg, "logits vs the original"))

    # batch permutation commutes
    perm = torch.arange(b - 1, -1, -1)
    with torch.no_grad():
        permuted = conv(x[perm])
    for i, (p, o) in enumerate(zip(_outputs(permuted), _outputs(out))):
        assert_close(p, o[perm], atol=1e-5, what=_what(cfg, f"output {i} of x[perm]"))


@given(cfg=backbone_configs())
def test_train_mode_every_parameter_gets_a_gradient(cfg: BackboneConfig) -> None:
    conv = _convert(cfg, build_backbone(cfg).train(), init="default")
    torch.manual_seed(cfg.seed)
    out = conv(torch.randn(cfg.x_shape))
    assert type(out) is CondOutput, _what(cfg, "train-mode output type")
    for i, t in enumerate(_outputs(out)):
        assert_shape(t, (cfg.batch, cfg.num_classes), what=_what(cfg, f"train output {i}"))
    sum(t.sum() for t in _outputs(out)).backward()
    # allow_zero: a drawn config may have a ReLU unit that is dead for every sample.
    assert_all_params_have_grad(
        conv, what=_what(cfg, "init='default', train, loss = sum of all logits"), allow_zero=True
    )


@given(cfg=backbone_configs())
def test_se_a_adds_the_heads_only_and_keeps_the_function(cfg: BackboneConfig) -> None:
    model = randomize_batchnorm_(build_backbone(cfg)).eval()
    conv = _convert(cfg, model, conditioned=False)
    assert count_params(conv) - count_params(model) == expected_param_delta(
        cfg, conditioned=False
    ), _what(cfg, "SE-A parameter delta")
    assert not any(isinstance(m, cond_types()) for m in conv.modules()), _what(cfg, "SE-A swapped")
    x = torch.randn(cfg.x_shape)
    with torch.no_grad():
        assert_close(conv(x).logits, model(x), atol=1e-5, what=_what(cfg, "SE-A logits"))


@given(cfg=backbone_configs(max_stages=3))
def test_save_load_round_trip_is_exact(cfg: BackboneConfig) -> None:
    conv = _convert(cfg, build_backbone(cfg), init="default", cond="probs").eval()
    x = torch.randn(cfg.x_shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = condattn.save(conv, Path(tmp) / "model.pt")
        # a fresh base model with other weights: load must replace all of them
        loaded = condattn.load(path, build_backbone(cfg, seed=cfg.seed + 1)).eval()
    assert condattn.get_config(loaded) == condattn.get_config(conv), _what(cfg, "config")
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(_outputs(loaded(x)), _outputs(conv(x)))):
            assert torch.equal(a, b), _what(cfg, f"output {i} after save/load")
