"""Parameter and MAC counting: the paper's Tables 1 and 2, the thop-0.0.31 rules, no side effects.

The full-size models are built once per depth by a module-scoped fixture that keeps only the
numbers. They are built on the ``meta`` device: parameter counts and the paper's MAC rules depend
on shapes alone, and meta tensors skip the weight init and the arithmetic (seconds -> a fraction).
The tiny-model tests below run the same counters on real tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from helpers import assert_state_dict_equal, state_dict_snapshot
from reference import ref_se_r_resnet
from torch import nn

import condattn
from condattn.models import Bottleneck, create_model
from condattn.nn import AuxHead, CondCoordAttn, CondLinear, CoordAttn, SqueezeExcite
from condattn.profiling import MAC_RULES, count_macs, count_params, mac_breakdown

PAPER_INPUT = (1, 3, 32, 32)
NUM_CLASSES = 100
# Paper Table 1 (params, M) and Table 2 (MACs, G), r=8, CIFAR-100.
TABLE1 = {34: (21.655, 26.145), 50: (28.779, 33.531), 101: (52.273, 57.243)}
TABLE2 = {34: (1.163, 1.169), 50: (1.315, 1.323), 101: (2.538, 2.546)}


# --- the paper's numbers ---------------------------------------------------------------------


@dataclass(frozen=True)
class PaperCounts:
    depth: int
    se_params: int
    se_macs: int
    se_r_params: int
    se_r_macs: int
    se_a_params: int
    aux_head_params: tuple[int, int]  # heads after layer2 and layer3
    conditioned_hidden_widths: int  # sum of C/r over the SE blocks of layer3 and layer4


@pytest.fixture(scope="module", params=sorted(TABLE1), ids=lambda d: f"depth{d}")
def paper(request: pytest.FixtureRequest) -> PaperCounts:
    """Counts for SE-ResNet-d, the reference SE-R-ResNet-d and SE-A-ResNet-d (models dropped)."""
    d = request.param
    with torch.device("meta"):
        se = create_model(f"se_resnet{d}", num_classes=NUM_CLASSES)
        se_r = ref_se_r_resnet(d, num_classes=NUM_CLASSES)
        se_a = ref_se_r_resnet(d, num_classes=NUM_CLASSES, conditioned=False)
        e = 4 if isinstance(se.layer1[0], Bottleneck) else 1
        heads = (
            count_params(AuxHead(128 * e, NUM_CLASSES)),
            count_params(AuxHead(256 * e, NUM_CLASSES)),
        )
    widths = sum(
        m.fc1.out_features
        for stage in (se.layer3, se.layer4)
        for m in stage.modules()
        if isinstance(m, SqueezeExcite)
    )
    return PaperCounts(
        depth=d,
        se_params=count_params(se),
        se_macs=count_macs(se, PAPER_INPUT, rules="paper"),
        se_r_params=count_params(se_r),
        se_r_macs=count_macs(se_r, PAPER_INPUT, rules="paper"),
        se_a_params=count_params(se_a),
        aux_head_params=heads,
        conditioned_hidden_widths=widths,
    )


def test_table1_se_resnet_params(paper: PaperCounts) -> None:
    got = round(paper.se_params / 1e6, 3)
    assert got == TABLE1[paper.depth][0], f"se_resnet{paper.depth}: {paper.se_params} params"


def test_table1_reference_se_r_resnet_params(paper: PaperCounts) -> None:
    got = round(paper.se_r_params / 1e6, 3)
    assert got == TABLE1[paper.depth][1], f"ref SE-R-ResNet{paper.depth}: {paper.se_r_params}"


def test_table2_se_resnet_macs(paper: PaperCounts) -> None:
    got = round(paper.se_macs / 1e9, 3)
    assert got == TABLE2[paper.depth][0], f"se_resnet{paper.depth}: {paper.se_macs} MACs"


def test_table2_reference_se_r_resnet_macs(paper: PaperCounts) -> None:
    got = round(paper.se_r_macs / 1e9, 3)
    assert got == TABLE2[paper.depth][1], f"ref SE-R-ResNet{paper.depth}: {paper.se_r_macs}"


def test_se_a_reference_is_the_base_plus_two_aux_heads_exactly(paper: PaperCounts) -> None:
    assert paper.se_a_params == paper.se_params + sum(paper.aux_head_params)


def test_se_r_adds_n_columns_to_every_conditioned_w1(paper: PaperCounts) -> None:
    """SE-R minus SE-A: n x C/r for every SE block of layer3 (T1) and layer4 (T2), Eq. 4."""
    delta = paper.se_r_params - paper.se_a_params
    assert delta == NUM_CLASSES * paper.conditioned_hidden_widths


# --- counting has no side effects ------------------------------------------------------------


def _module_flags(model: nn.Module) -> dict[str, tuple[bool, int, int]]:
    return {
        name: (m.training, len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in model.named_modules()
    }


@pytest.mark.parametrize("rules", MAC_RULES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["se_resnet18", "cbam_resnet18"])
def test_counting_leaves_the_model_untouched(name: str, train: bool, rules: str) -> None:
    model = create_model(name, num_classes=10, widths=(8, 16, 32, 64)).train(train)
    before = state_dict_snapshot(model)
    buffers = [n for n, _ in model.named_buffers()]
    flags = _module_flags(model)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    assert count_macs(model, (1, 3, 16, 16), rules=rules) > 0
    what = f"count_macs({name}.train({train}), rules={rules!r})"
    assert_state_dict_equal(before, state_dict_snapshot(model), what=what)
    assert [n for n, _ in model.named_buffers()] == buffers, f"{what} added buffers"
    assert _module_flags(model) == flags, f"{what} changed training flags or left hooks"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires_grad
    assert not any(hasattr(m, "total_ops") for m in model.modules()), f"{what}: thop leftovers"


def test_mac_breakdown_leaves_the_model_untouched() -> None:
    model = create_model("se_resnet18", num_classes=10, widths=(8, 16, 32, 64)).train()
    before = state_dict_snapshot(model)
    flags = _module_flags(model)
    mac_breakdown(model, (1, 3, 16, 16))
    assert_state_dict_equal(before, state_dict_snapshot(model), what="mac_breakdown(model)")
    assert _module_flags(model) == flags


def test_unknown_rules_raise_listing_valid_rules() -> None:
    with pytest.raises(ValueError, match="unknown rules 'bad'") as err:
        count_macs(nn.Linear(2, 2), (1, 2), rules="bad")
    for rules in ("paper", "thop", "flop_counter"):
        assert rules in str(err.value)


# --- the paper (thop 0.0.31) rules, by hand --------------------------------------------------

# (module, input size, MACs by the thop-0.0.31 rules written out by hand)
PER_MODULE = [
    # conv: out elements (4*8*8 = 256) x (Cin/groups * k*k + 1 if bias)
    (nn.Conv2d(3, 4, 3, padding=1), (1, 3, 8, 8), 256 * (3 * 9 + 1)),
    (nn.Conv2d(3, 4, 3, padding=1, bias=False), (1, 3, 8, 8), 256 * (3 * 9)),
    (nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False), (1, 4, 8, 8), 8 * 64 * (2 * 9)),
    (nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 8, 8), 2 * 4 * 16 * (3 * 9 + 1)),
    (nn.Conv1d(1, 1, 3, padding=1, bias=False), (2, 1, 16), 2 * 16 * 3),
    # BN: 2 x elements
    (nn.BatchNorm2d(3), (1, 3, 8, 8), 2 * 192),
    (nn.BatchNorm1d(6), (4, 6), 2 * 24),
    # Linear: in_features x out elements, no bias term
    (nn.Linear(12, 5), (1, 12), 12 * 5),
    (nn.Linear(12, 5), (3, 12), 3 * 12 * 5),
    # adaptive avg pool: (prod(in // out) + 1) x out elements
    (nn.AdaptiveAvgPool2d(1), (1, 3, 8, 8), (64 + 1) * 3),
    (nn.AdaptiveAvgPool2d(2), (1, 3, 8, 8), (16 + 1) * 12),
    (nn.AdaptiveAvgPool2d(3), (1, 3, 8, 8), (4 + 1) * 27),  # 8 // 3 = 2 per axis
    # avg pool: (prod(kernel) + 1) x out elements
    (nn.AvgPool2d(2), (1, 3, 8, 8), (4 + 1) * 48),
    # zero: activations, gates, dropout, max-pool, flatten
    (nn.ReLU(), (1, 3, 8, 8), 0),
    (nn.Sigmoid(), (1, 3, 8, 8), 0),
    (nn.Dropout(0.5), (1, 3, 8, 8), 0),
    (nn.MaxPool2d(2), (1, 3, 8, 8), 0),
    (nn.Flatten(), (1, 3, 8, 8), 0),
]


@pytest.mark.parametrize(("module", "size", "expected"), PER_MODULE, ids=lambda v: repr(v))
def test_paper_rule_of_a_single_module(module: nn.Module, size: tuple, expected: int) -> None:
    assert count_macs(module, size, rules="paper") == expected


class _TwoConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.relu(self.bn(self.conv1(x))))
        # functional ops are invisible to the module rules, as in thop 0.0.31
        x = torch.sigmoid(x) * x
        return self.fc(self.pool(x).flatten(1))


def test_paper_rules_of_a_hand_built_net_match_a_hand_count() -> None:
    hand = {
        "conv1": 4 * 8 * 8 * (3 * 9 + 1),  # 7168
        "bn": 2 * 4 * 8 * 8,  # 512
        "conv2": 6 * 8 * 8 * 4,  # 1536
        "pool": (64 + 1) * 6,  # 390
        "fc": 6 * 5,  # 30
    }
    model = _TwoConvNet()
    assert mac_breakdown(model, (1, 3, 8, 8)) == hand
    assert count_macs(model, (1, 3, 8, 8)) == sum(hand.values()) == 9636
    assert count_macs(model, (2, 3, 8, 8)) == 2 * 9636


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


def test_a_module_called_twice_is_counted_twice() -> None:
    once = 3 * 8 * 8 * (3 * 9 + 1)
    assert mac_breakdown(_Twice(), (1, 3, 8, 8)) == {"conv": 2 * once}
    assert count_macs(_Twice(), (1, 3, 8, 8)) == 2 * once


@pytest.mark.parametrize("name", ["se_resnet18", "cbam_resnet18", "ca_resnet50", "eca_resnet18"])
def test_mac_breakdown_sums_to_count_macs_over_leaf_modules(name: str) -> None:
    model = create_model(name, num_classes=10, widths=(8, 16, 32, 64))
    parts = mac_breakdown(model, (1, 3, 16, 16))
    assert sum(parts.values()) == count_macs(model, (1, 3, 16, 16), rules="paper")
    modules = dict(model.named_modules())
    for key in parts:
        assert key in modules, f"{key} is not a module of {name}"
        assert next(modules[key].children(), None) is None, f"{key} is not a leaf"


def test_flop_counter_agrees_with_paper_rules_on_bias_free_convs_and_linears() -> None:
    """Both count conv and matmul MACs alike once bias, BN and pooling terms are out."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.Conv2d(4, 2, 1, bias=False),
        nn.Flatten(),
        nn.Linear(2 * 8 * 8, 5),
    )
    assert count_macs(model, (2, 3, 8, 8), rules="flop_counter") == count_macs(
        model, (2, 3, 8, 8), rules="paper"
    )


# --- learned maps run as function calls (the twins' widened first layer) -----------------------


class _WithCond(nn.Module):
    """Feeds a fixed T (a buffer, not a parameter) to a twin, so count_macs can run it."""

    def __init__(self, twin: nn.Module, n: int, batch: int):
        super().__init__()
        self.twin = twin
        self.register_buffer("t", torch.randn(batch, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.twin(x, self.t)


@pytest.mark.parametrize("batch", [1, 3])
def test_cond_linear_counts_its_functional_map_like_a_linear_on_t_and_z(batch: int) -> None:
    n, c, rd = 5, 12, 4
    net = _WithCond(CondLinear.from_module(nn.Linear(c, rd), cond_dim=n), n, batch)
    # F.linear on z: C x rd per sample; W_T T: n x rd per sample = Linear(n + C, rd) on [T; z]
    assert mac_breakdown(net, (batch, c)) == {"twin": batch * (c + n) * rd}


def test_cond_linear_conv_counts_the_conv_rule_plus_t_once_per_sample() -> None:
    n, c, rd, hw = 5, 12, 4, 3
    net = _WithCond(CondLinear.from_module(nn.Conv2d(c, rd, 1), cond_dim=n), n, 2)
    conv = 2 * rd * hw * hw * (c + 1)  # out elements x (Cin + bias)
    assert count_macs(net, (2, c, hw, hw)) == conv + 2 * n * rd


def test_cond_coord_attn_counts_its_shared_conv_by_hand() -> None:
    n, c, h, w = 6, 16, 4, 5
    twin = CondCoordAttn.from_module(CoordAttn(c, rd_channels=8), cond_dim=n)
    mip = 8
    hand = {
        "twin.conv1": mip * (h + w) * (c + 1) + n * mip,  # W1_U pool(U) + b, then W1_T T once
        "twin.bn1": 2 * mip * (h + w),
        "twin.conv_h": c * h * (mip + 1),
        "twin.conv_w": c * w * (mip + 1),
    }
    assert mac_breakdown(_WithCond(twin, n, 1), (1, c, h, w)) == hand


def test_conditioning_adds_exactly_w1_t_per_fed_coord_attn_block() -> None:
    """CA-R minus CA-A: n x mip per conditioned block (the old counter gave CA-R *fewer* MACs)."""
    base = create_model("ca_resnet18", num_classes=10, widths=(8, 16, 32, 64))
    se_a = condattn.convert(base, ["layer2", "layer3"], conditioned=False)
    se_r = condattn.convert(base, ["layer2", "layer3"])
    fed = [m for m in se_r.modules() if isinstance(m, CondCoordAttn)]
    assert fed, "nothing was conditioned"
    delta = sum(10 * m.conv1.out_channels for m in fed)
    size = (1, 3, 32, 32)
    assert count_macs(se_r, size) - count_macs(se_a, size) == delta


class _InlineSE(nn.Module):
    """An SE written inline (no SE module), as converted to a CondLinear; conv or linear W1."""

    def __init__(self, c: int, conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        make = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.fc1, self.fc2 = make(c, c // 2), make(c // 2, c)
        self.is_conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.conv(x)
        if self.is_conv:
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(u.mean((2, 3), keepdim=True)))))
        else:
            z = torch.nn.functional.adaptive_avg_pool2d(u, 1).flatten(1)
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(z)))).view(u.shape[0], -1, 1, 1)
        return x + u * s


class _InlineNet(nn.Module):
    def __init__(self, c: int = 8, n: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.b1, self.b2, self.b3 = _InlineSE(c, False), _InlineSE(c, True), _InlineSE(c, False)
        self.fc = nn.Linear(c, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b3(self.b2(self.b1(self.stem(x)))).mean((2, 3)))


def test_conditioning_adds_exactly_w1_t_per_fed_inline_se() -> None:
    model = _InlineNet()
    se_a = condattn.convert(model, ["b1"], conditioned=False)
    se_r = condattn.convert(model, ["b1"])
    fed = [m for m in se_r.modules() if isinstance(m, CondLinear)]
    assert len(fed) == 2
    size = (1, 3, 16, 16)
    assert count_macs(se_r, size) - count_macs(se_a, size) == 2 * 10 * 4  # n x C/r each


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv2d(x, self.weight, padding=1)  # (B, 4, 8, 8)
        a = y.flatten(2)  # (B, 4, 64)
        return a @ a.transpose(1, 2)  # two activations: an attention map, not a learned map


def test_functional_conv_on_a_parameter_counts_and_activation_products_do_not() -> None:
    assert mac_breakdown(_Functional(), (2, 3, 8, 8)) == {"": 2 * 4 * 64 * 27}


# --- count_params ----------------------------------------------------------------------------


def test_count_params_counts_shared_parameters_once() -> None:
    shared = nn.Linear(4, 4)
    assert count_params(nn.Sequential(shared, nn.ReLU(), shared)) == 4 * 4 + 4


def test_count_params_trainable_only_skips_frozen_parameters() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    assert count_params(model) == (4 * 3 + 3) + (3 * 2 + 2)
    assert count_params(model, trainable_only=True) == 3 * 2 + 2


def test_count_params_ignores_buffers() -> None:
    assert count_params(nn.BatchNorm2d(8)) == 16
