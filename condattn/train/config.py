"""Typed, frozen training configuration: the schema of a run and its cross-field checks.

One frozen dataclass per recipe table (``[model]``, ``[loss]``, ``[optim]``, ``[data]``,
``[system]``, ``[paper]``), each default with a why-comment; :data:`SECTIONS` maps the table
names to them and :data:`CHOICES` holds the fixed vocabularies. :func:`validate` applies the
cross-field rules and resolves defaults (e.g. the paper's lossW per depth).

Reading recipes (TOML files with ``base`` inheritance), ``--set`` overrides and writing a
config back to TOML live in :mod:`condattn.train.recipe`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

from condattn.nn._common import INITS  # model.cond_init: the twins' T-column inits
from condattn.train.speed import CHANNELS_LAST, COMPILE_MODES, PRECISIONS
from condattn.transform.conds import COND_MODES, CONDS  # model.cond / model.cond_mode
from condattn.transform.config import AUX_HEAD_KEYS  # [model.aux_head]: convert's aux_head keys

__all__ = [
    "CHOICES",
    "LEGACY_KEYS",
    "PAPER_LOSS_W",
    "SECTIONS",
    "VARIANTS",
    "VARIANT_LABELS",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PaperConfig",
    "SystemConfig",
    "TrainConfig",
    "upgrade_keys",
    "validate",
]

VARIANTS = ("se", "se_a", "se_r")  # plain SE-ResNet, aux heads only (SE-A), conditioned (SE-R)
# How tables, plots and logs name the variants (the paper's names).
VARIANT_LABELS = {"se": "SE", "se_a": "SE-A", "se_r": "SE-R"}
DEVICES = ("auto", "cpu", "cuda")
# model.aux_at = "auto" (read as a one-entry list); convert places this many heads.
AUX_AT_AUTO = ("auto",)
AUTO_HEADS = 2
# model.kwargs keys that the run sets itself (RESERVED_KWARGS[key] says how).
RESERVED_KWARGS = {
    "num_classes": "it comes from the data",
    "r": "it is model.r (condattn's zoo only)",
    "widths": "it is model.widths (condattn's zoo only)",
    "pretrained": "runs start from random weights",
    "weights": "runs start from random weights",
}
# The paper's best lossW per depth (section 4, Table 3); used when loss.aux_weights is unset.
PAPER_LOSS_W: dict[int, tuple[float, float]] = {34: (0.4, 0.4), 50: (0.3, 0.3), 101: (0.3, 0.2)}


class ConfigError(ValueError):
    """A recipe or override is invalid; the message lists the valid choices."""


@dataclass(frozen=True)
class ModelConfig:
    # The paper's Table 3/4 network is SE-ResNet50 at r=8. Also "timm:NAME" or
    # "torchvision:NAME": built with random weights and the data's number of classes.
    arch: str = "se_resnet50"
    # "se": plain SE-ResNet; "se_a": aux heads + loss only; "se_r": heads also feed attention.
    variant: str = "se_r"
    # Paper Fig. 2: heads after the second and third stages. Module names (see
    # condattn.list_stages), or "auto": condattn.convert places two heads from the graph's
    # strides (a model where its rule places one needs the names listed).
    aux_at: tuple[str, ...] = ("layer2", "layer3")
    # Paper section 4: GoogLeNet's aux dropout of 0.7 (Table 5 sweeps it).
    aux_dropout: float = 0.7
    # SE reduction ratio r; the paper uses 8 throughout except Table 10. condattn's zoo only:
    # a timm:/torchvision: arch keeps its own attention and refuses any other r.
    r: int = 8
    # Stage widths; empty = the paper's (64, 128, 256, 512). Tiny ones make fast smoke runs.
    # condattn's zoo only; must stay empty for a timm:/torchvision: arch.
    widths: tuple[int, ...] = ()
    # T-column init: "default" (PyTorch init) for training from scratch as in the paper;
    # "zeros" keeps a converted pretrained model's function unchanged (fine-tuning).
    cond_init: str = "default"
    # What is fed as T (Eq. 4): the aux logits or their softmax. The paper does not say; raw
    # logits are our choice (docs/concepts.md, "The paper's facts vs our choices").
    cond: str = "logits"
    # condattn's controls and extensions (docs/concepts.md): "features" (the heads' penultimate
    # activations as T) and "shuffled" (another image's logits) are the cond values above;
    # how T enters: "concat" (Eq. 4) or "film" (a scale and shift of the gate's pre-activation)
    cond_mode: str = "concat"
    # k > 0: project T to k values per head before the blocks (many classes); 0: T whole (paper)
    cond_rank: int = 0
    # Stop gradients from the attention into the heads. The paper does not say; letting them
    # flow is our choice.
    detach_cond: bool = False
    # Section 5.6: a separate model (e.g. "googlenet_cifar") supplies T instead of aux heads.
    aux_model: str = ""
    # Which attention the aux model's T feeds: module names or name prefixes (see
    # condattn.list_attention). Empty = every attention block that no aux_at head feeds (all 16
    # SE blocks of SE-ResNet50: our reading of section 5.6, which does not say);
    # ["layer3", "layer4"] is the other reading, the stages the aux heads' T feeds.
    aux_model_feeds: tuple[str, ...] = ()
    # [model.aux_head]: the aux heads' sizes, keys pool_size / width / hidden; empty = the
    # paper's GoogLeNet heads (4 / 128 / 1024: 4.4M parameters for 100 classes, whatever the
    # backbone). Smaller ones suit narrow backbones, e.g. {width = 32, hidden = 256}.
    aux_head: dict[str, Any] = field(default_factory=dict)
    # Fine-tuning: start from a plain model's trained weights instead of random ones: a run
    # checkpoint of a variant "se" run (its file or run directory), or a file holding the plain
    # model's state_dict. se_a/se_r load them with condattn.load_base_state_dict (the heads and
    # the T columns keep their init: with cond_init = "zeros" the model computes exactly what
    # the plain one did at step 0). Empty = random init.
    init_from: str = ""
    # [model.kwargs]: further constructor options of arch (e.g. timm's drop_rate); empty = the
    # model's own defaults. num_classes comes from the data, r/widths have their own keys.
    kwargs: dict[str, Any] = field(default_factory=dict)
    # A plain CNN (timm:resnet50, torchvision:convnext_tiny): insert attention of this kind
    # ("se", "eca", "cbam", "coord") with condattn.add_attention before the variant is made, so
    # se / se_a / se_r compare on it; model.r is then its reduction ratio. "" = none.
    add_attention: str = ""
    # Where: "auto" (every block of every stage) or module names (blocks, stages).
    add_attention_at: tuple[str, ...] = AUX_AT_AUTO
    # "default": the from-scratch init; "identity": the new blocks compute the identity, so a
    # trained plain model (init_from) keeps its function.
    add_attention_init: str = "default"

    @property
    def auto_aux_at(self) -> bool:
        """``aux_at = "auto"``: condattn.convert places the heads."""
        return self.aux_at == AUX_AT_AUTO


@dataclass(frozen=True)
class LossConfig:
    # lossW1, lossW2, ...; empty = the paper's per-depth choice (PAPER_LOSS_W).
    aux_weights: tuple[float, ...] = ()
    # The paper uses plain cross-entropy.
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    # Paper section 4: init lr 0.1 reached after a linear warm-up.
    lr: float = 0.1
    # Nesterov momentum 0.9 (paper section 4, after DeVries & Taylor).
    momentum: float = 0.9
    nesterov: bool = True
    # Paper section 4.
    weight_decay: float = 5e-4
    # GLOBAL batch (all ranks together); paper: 128.
    batch_size: int = 128
    # Paper: 200 epochs.
    epochs: int = 200
    # Linear per-step warm-up over the first epoch (paper section 4, after He et al.).
    warmup_epochs: int = 1
    # lr is multiplied by gamma after this many finished epochs: /5 from epoch 61, 121, 161.
    milestones: tuple[int, ...] = (60, 120, 160)
    gamma: float = 0.2


@dataclass(frozen=True)
class DataConfig:
    # Which loader in condattn.data.DATASETS: "cifar100" (the paper's data), "cifar10",
    # "imagefolder" (root/train/<class>/ and root/val/<class>/) or "synthetic" (smoke runs).
    dataset: str = "cifar100"
    # Folder or archive with the data; empty = search ($CONDATTN_DATA, else ./data and
    # ../shared/data) for CIFAR, $CONDATTN_DATA for image folders. A path that is set but
    # missing is an error, never skipped for another folder.
    root: str = ""
    # Train on a fixed random subset of this many images (0 = all 50k); for quick CPU runs.
    train_subset: int = 0
    # Evaluate on a fixed random subset of the test set (0 = all 10k).
    test_subset: int = 0
    # Paper section 4 augmentation: random crop (padding 4), horizontal flip, rotation +-15 deg.
    crop: bool = True
    padding: int = 4
    flip: bool = True
    rotate: bool = True
    max_angle: float = 15.0
    # Sizes of the in-memory synthetic set used by ``train --synthetic``.
    synthetic_train: int = 1000
    synthetic_test: int = 200
    # Image folders: side of the stored square images (shorter side resized, centre crop), the
    # size the model sees; 0 = the dataset's own (32 for CIFAR; image folders must set it).
    image_size: int = 0
    # Image folders: 0 = evaluate on root/val/; else hold out this share of every class
    # (stratified) when the root has class folders only.
    val_fraction: float = 0.0
    # Seeds that held-out split; separate from system.seed so that every run of a comparison
    # is evaluated on the same images.
    split_seed: int = 0
    # Image folders: skip unreadable images (counted in the data source line) instead of
    # stopping at the first with its name; off so that a damaged dataset is noticed.
    skip_bad_images: bool = False
    # Image folders: threads that decode the images once into the cache; 0 = one per core.
    decode_workers: int = 0
    # Train augmentation: "paper" (pad-4 crop, flip, +-15 deg rotation; section 4), "rrc"
    # (random resized crop + flip, the ImageNet recipe) or "auto" (paper for images of at most
    # 32 px, rrc above: the paper's crop is tuned to 32 px images).
    augment: str = "auto"
    # rrc: the range of the crop's share of the image area (torchvision/ImageNet: 0.08 to 1).
    rrc_scale: tuple[float, ...] = (0.08, 1.0)
    # "mean_std": (x - mean) / std per channel, the usual PyTorch recipe and what every run so
    # far used; "mean": mean subtraction only, as the paper states (section 4). Both use the
    # train split's statistics.
    normalize: str = "mean_std"


@dataclass(frozen=True)
class SystemConfig:
    # Seeds model init, data order/augmentation and the per-epoch torch RNG.
    seed: int = 0
    # "auto" = cuda when available.
    device: str = "auto"
    # The speed keys below are decided once at start-up from the hardware
    # (condattn.train.speed.decide) and logged in environment.json; "auto" picks, any other
    # value overrides.
    # "auto": bf16 autocast of forward and loss where the hardware runs bf16 natively (CUDA GPUs
    # with bf16, CPUs with AMX or AVX512-BF16), else "fp32". Weights and optimiser stay fp32.
    precision: str = "auto"
    # channels_last memory format: "auto" = on for CPUs (measured faster) and bf16 GPUs.
    channels_last: str = "auto"
    # torch.compile mode or "off"; "auto" compiles runs of >= 10,000 steps (compiling takes
    # minutes; it pays back only over long runs), with inductor's "default" mode.
    compile: str = "auto"
    # torch.set_num_threads; 0 = the cores this process may use (affinity, cgroup quota), or
    # OMP_NUM_THREADS when set.
    threads: int = 0
    # torch.use_deterministic_algorithms + no cudnn benchmark: bit-identical resume.
    deterministic: bool = False
    # Evaluation batch (global); any size, it does not change the numbers. Large, as evaluation
    # keeps no activations for backward: fewer, fuller kernels (what pays on a GPU).
    eval_batch_size: int = 1000
    # Progress bars: "auto" shows them only when stdout is a terminal.
    progress: str = "auto"


@dataclass(frozen=True)
class PaperConfig:
    # Tables of the paper this run reproduces a row of (a row may appear in several).
    tables: tuple[str, ...] = ()
    # The row's label in the paper, e.g. "SE-R-ResNet50 lossW 0.3, 0.3".
    row: str = ""
    # The paper's top-1 accuracy (%) for the row; 0 = none.
    top1: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    # Run name; default run dir is runs/<name>.
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), for JSON/TOML and checkpoints."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def depth(self) -> int | None:
        """The ResNet depth in ``model.arch`` (e.g. 50), or None."""
        m = re.search(r"resnet(\d+)", self.model.arch)
        return int(m.group(1)) if m else None

    @property
    def num_heads(self) -> int:
        """Number of aux outputs the model returns."""
        if self.model.variant == "se":
            return 0
        heads = AUTO_HEADS if self.model.auto_aux_at else len(self.model.aux_at)
        return heads + (1 if self.model.aux_model else 0)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "system": SystemConfig,
    "paper": PaperConfig,
}
# The fixed vocabularies, by (section, key): a value outside them is refused with this list.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "variant"): VARIANTS,
    ("model", "cond_init"): INITS,
    ("model", "add_attention"): ("", "se", "eca", "cbam", "coord"),
    ("model", "add_attention_init"): ("default", "identity"),
    ("model", "cond"): CONDS,
    ("model", "cond_mode"): COND_MODES,
    ("system", "device"): DEVICES,
    ("system", "precision"): PRECISIONS,
    ("system", "channels_last"): CHANNELS_LAST,
    ("system", "compile"): COMPILE_MODES,
    ("system", "progress"): ("auto", "on", "off"),
    ("data", "dataset"): ("cifar100", "cifar10", "imagefolder", "synthetic"),
    ("data", "augment"): ("auto", "paper", "rrc"),
    ("data", "normalize"): ("mean_std", "mean"),
}
# Old spellings that recipes, saved configs and checkpoints may still hold, by (section, key):
# the new key and the new value of each old one.
LEGACY_KEYS: dict[tuple[str, str], tuple[str, dict[Any, Any]]] = {
    ("system", "bf16"): ("precision", {True: "bf16", False: "fp32"}),
}
# Keys that were booleans: true/false still read as these words.
_BOOL_WORDS: dict[tuple[str, str], dict[bool, str]] = {
    ("system", "channels_last"): {True: "on", False: "off"},
    ("system", "compile"): {True: "default", False: "off"},
}


def upgrade_keys(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Translates old spellings in one section's values (:data:`LEGACY_KEYS`, booleans of keys
    that became vocabularies); an old and a new key for the same setting is an error."""
    out = dict(values)
    for (sec, old), new in LEGACY_KEYS.items():
        if sec != section or old not in out:
            continue
        value = out.pop(old)
        key, mapping = new
        if key in values:
            raise ConfigError(f"{section}.{old} and {section}.{key} both given; keep {key}")
        out[key] = mapping.get(value, value)
    for (sec, key), words in _BOOL_WORDS.items():
        if sec == section and isinstance(out.get(key), bool):
            out[key] = words[out[key]]
    return out


def _check_model_names(m: ModelConfig) -> None:
    """arch/aux_model name models that create_model builds; zoo-only keys stay at defaults."""
    from condattn.models import check_model_name  # deferred: keep config importable on its own

    sources = {}
    for key in ("arch", "aux_model") if m.aux_model else ("arch",):
        try:
            sources[key] = check_model_name(getattr(m, key))
        except (ValueError, ImportError) as err:
            raise ConfigError(f"model.{key}: {err}") from None
    r_used = m.r == ModelConfig.r or m.add_attention  # r of the added attention
    if sources["arch"] != "condattn" and (m.widths or not r_used):
        raise ConfigError(
            f"model.widths and model.r configure condattn's CIFAR zoo only (and r the "
            f"attention of model.add_attention); for {m.arch} leave them unset and give the "
            "model's own options in [model.kwargs]"
        )
    if "auto" in m.aux_at and not m.auto_aux_at:
        raise ConfigError(f'model.aux_at is "auto" or a list of module names, got {m.aux_at}')
    for key in m.kwargs:
        if key in RESERVED_KWARGS:
            raise ConfigError(f"model.kwargs.{key} cannot be set: {RESERVED_KWARGS[key]}")
    for key, v in m.aux_head.items():
        if key not in AUX_HEAD_KEYS:
            raise ConfigError(f"model.aux_head.{key} is unknown; valid: {', '.join(AUX_HEAD_KEYS)}")
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"model.aux_head.{key} must be a positive integer, got {v!r}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-field checks and defaults; returns the resolved config (explicit lossW etc.)."""
    m, o = cfg.model, cfg.optim
    _check_model_names(m)
    if m.widths and len(m.widths) != 4:
        raise ConfigError(f"model.widths needs 4 entries (one per stage), got {m.widths}")
    if not 0.0 <= m.aux_dropout < 1.0:
        raise ConfigError(f"model.aux_dropout must lie in [0, 1), got {m.aux_dropout}")
    if m.cond_rank < 0:
        raise ConfigError(f"model.cond_rank must be >= 0 (0: T whole), got {m.cond_rank}")
    if m.variant == "se":  # no heads: aux settings do not apply and are recorded as empty
        m = dataclasses.replace(m, aux_at=(), aux_model="", aux_model_feeds=(), aux_head={})
        cfg = dataclasses.replace(cfg, model=m, loss=dataclasses.replace(cfg.loss, aux_weights=()))
    elif cfg.num_heads == 0:
        raise ConfigError(f"model.variant={m.variant!r} needs model.aux_at or model.aux_model")
    if m.aux_model_feeds and (m.variant != "se_r" or not m.aux_model or m.auto_aux_at):
        raise ConfigError(
            "model.aux_model_feeds routes the aux model's T: it needs model.variant='se_r', "
            f"model.aux_model and model.aux_at listed by name (got variant={m.variant!r}, "
            f"aux_model={m.aux_model!r}, aux_at={list(m.aux_at)})"
        )
    weights = cfg.loss.aux_weights
    if m.variant != "se" and not weights:
        default = PAPER_LOSS_W.get(cfg.depth or 0, (0.3, 0.3))
        weights = default if cfg.num_heads == 2 else (0.3,) * cfg.num_heads
        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, aux_weights=weights))
    if len(weights) != cfg.num_heads:
        raise ConfigError(
            f"loss.aux_weights={list(weights)} has {len(weights)} entries but the model has "
            f"{cfg.num_heads} aux output(s) (aux_at={list(m.aux_at)}, aux_model={m.aux_model!r})"
        )
    for key, value, ok in (
        ("epochs", o.epochs, o.epochs >= 1),
        ("batch_size", o.batch_size, o.batch_size >= 1),
        ("lr", o.lr, o.lr > 0),
    ):
        if not ok:
            need = "> 0" if key == "lr" else ">= 1"
            raise ConfigError(f"optim.{key} must be {need}, got {value}")
    if list(o.milestones) != sorted(set(o.milestones)) or any(x < 1 for x in o.milestones):
        raise ConfigError(f"optim.milestones must be increasing epochs >= 1, got {o.milestones}")
    if not 0 <= o.warmup_epochs <= o.epochs:
        raise ConfigError(f"optim.warmup_epochs must lie in [0, epochs], got {o.warmup_epochs}")
    if min(cfg.data.train_subset, cfg.data.test_subset, cfg.system.threads) < 0:
        raise ConfigError("data.train_subset, data.test_subset and system.threads must be >= 0")
    _check_data(cfg.data)
    return cfg


def _check_data(d: DataConfig) -> None:
    """The [data] ranges that the loaders would otherwise refuse only after a long decoding."""
    if d.image_size < 0 or d.decode_workers < 0:
        raise ConfigError("data.image_size and data.decode_workers must be >= 0")
    if d.dataset == "imagefolder" and d.image_size == 0:
        raise ConfigError('data.dataset = "imagefolder" needs data.image_size (e.g. 64 or 224)')
    if d.dataset != "imagefolder" and d.image_size not in (0, 32):
        raise ConfigError(f"data.image_size applies to image folders; {d.dataset} images are 32 px")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must lie in [0, 1), got {d.val_fraction}")
    if len(d.rrc_scale) != 2 or not 0.0 < d.rrc_scale[0] <= d.rrc_scale[1] <= 1.0:
        raise ConfigError(f"data.rrc_scale must be [min, max], 0 < min <= max <= 1: {d.rrc_scale}")
