"""Typed, frozen training configuration: TOML recipes with inheritance and ``--set`` overrides.

A recipe is a TOML file with up to six tables, one per dataclass below::

    base = "../base.toml"        # optional: inherit (deep-merge) from another recipe first
    name = "se_r_resnet50"
    [model]  arch = "se_resnet50"; variant = "se_r"; aux_at = ["layer2", "layer3"] ...
    [loss]   aux_weights = [0.3, 0.3]
    [optim]  lr = 0.1; milestones = [60, 120, 160]; gamma = 0.2 ...
    [data]   train_subset = 0 ...
    [system] seed = 0; bf16 = false ...
    [paper]  tables = ["3", "4"]; row = "SE-R-ResNet50"; top1 = 79.96

Every key is checked: an unknown key, a value of the wrong type or a value outside a fixed
vocabulary raises :class:`ConfigError` that lists the valid choices. ``--set section.key=value``
(or a bare ``key=value`` when the key name is unique across sections) overrides one value; the
value is parsed as TOML (``0.1``, ``true``, ``[0.3, 0.3]``) and falls back to a plain string.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "PAPER_LOSS_W",
    "VARIANTS",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PaperConfig",
    "SystemConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_toml",
    "load_recipe",
]

VARIANTS = ("se", "se_a", "se_r")  # plain SE-ResNet, aux heads only (SE-A), conditioned (SE-R)
COND_INITS = ("default", "zeros")
CONDS = ("logits", "probs")
DEVICES = ("auto", "cpu", "cuda")
# The paper's best lossW per depth (section 4, Table 3); used when loss.aux_weights is unset.
PAPER_LOSS_W: dict[int, tuple[float, float]] = {34: (0.4, 0.4), 50: (0.3, 0.3), 101: (0.3, 0.2)}


class ConfigError(ValueError):
    """A recipe or override is invalid; the message lists the valid choices."""


@dataclass(frozen=True)
class ModelConfig:
    # The paper's Table 3/4 network is SE-ResNet50 at r=8.
    arch: str = "se_resnet50"
    # "se": plain SE-ResNet; "se_a": aux heads + loss only; "se_r": heads also feed attention.
    variant: str = "se_r"
    # Paper Fig. 2: heads after the second and third stages.
    aux_at: tuple[str, ...] = ("layer2", "layer3")
    # Paper section 4: GoogLeNet's aux dropout of 0.7 (Table 5 sweeps it).
    aux_dropout: float = 0.7
    # SE reduction ratio r; the paper uses 8 throughout except Table 10.
    r: int = 8
    # Stage widths; empty = the paper's (64, 128, 256, 512). Tiny ones make fast smoke runs.
    widths: tuple[int, ...] = ()
    # T-column init: "default" (PyTorch init) for training from scratch as in the paper;
    # "zeros" keeps a converted pretrained model's function unchanged (fine-tuning).
    cond_init: str = "default"
    # What is fed as T: the aux logits (paper Eq. 4) or their softmax.
    cond: str = "logits"
    # Stop gradients from the attention into the heads; the paper lets them flow.
    detach_cond: bool = False
    # Section 5.6: a separate model (e.g. "googlenet_cifar") supplies T instead of aux heads.
    aux_model: str = ""


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
    # lr is multiplied by gamma at the start of these (0-based) epochs: /5 at 60, 120, 160.
    milestones: tuple[int, ...] = (60, 120, 160)
    gamma: float = 0.2


@dataclass(frozen=True)
class DataConfig:
    # Folder or archive with CIFAR-100; empty = search with find_cifar100 (../shared/data etc.).
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


@dataclass(frozen=True)
class SystemConfig:
    # Seeds model init, data order/augmentation and the per-epoch torch RNG.
    seed: int = 0
    # "auto" = cuda when available.
    device: str = "auto"
    # bf16 autocast for the forward pass (GPU speed; off for paper parity).
    bf16: bool = False
    # channels_last memory format (faster convs on GPU).
    channels_last: bool = False
    # torch.compile the model (slow start, faster steps on GPU).
    compile: bool = False
    # Swap SE blocks for condattn.nn.FusedSqueezeExcite (same maths, hand-written backward);
    # off by default: it saved ~0.5% of a CPU train step (docs/results.md).
    fused_se: bool = False
    # torch.set_num_threads; 0 leaves torch's default.
    threads: int = 0
    # torch.use_deterministic_algorithms + no cudnn benchmark: bit-identical resume.
    deterministic: bool = False
    # Evaluation batch (global); any size, it does not change the numbers.
    eval_batch_size: int = 500
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
        return len(self.model.aux_at) + (1 if self.model.aux_model else 0)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "system": SystemConfig,
    "paper": PaperConfig,
}
_TOP_LEVEL = ("name", "base", *SECTIONS)
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "variant"): VARIANTS,
    ("model", "cond_init"): COND_INITS,
    ("model", "cond"): CONDS,
    ("system", "device"): DEVICES,
    ("system", "progress"): ("auto", "on", "off"),
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Converts a TOML/override value to the annotated type, or raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):  # "--set aux_at=layer2,layer3" or "--set widths="
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"unsupported type {tp} for {where}")  # pragma: no cover
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"unsupported type {tp} for {where}")  # pragma: no cover


def _build_section(cls: type, values: Mapping[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; valid keys in "
            f"[{section}]: {', '.join(hints)}"
        )
    kwargs = {}
    for key, value in values.items():
        v = _coerce(value, hints[key], f"{section}.{key}")
        choices = _CHOICES.get((section, key))
        if choices is not None and v not in choices:
            raise ConfigError(f"{section}.{key}={v!r} is not valid; choose one of: {choices}")
        kwargs[key] = v
    return cls(**kwargs)


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    """Builds and validates a :class:`TrainConfig` from a nested dict (``base`` must be gone)."""
    unknown = sorted(set(d) - set(_TOP_LEVEL) - {"base"})
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {unknown}; valid: {', '.join(_TOP_LEVEL)} "
            "(put options inside their [section])"
        )
    sections = {}
    for name, cls in SECTIONS.items():
        values = d.get(name, {})
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table, got {values!r}")
        sections[name] = _build_section(cls, values, name)
    cfg = TrainConfig(name=str(d.get("name", "run")), **sections)
    return validate(cfg)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Cross-field checks and defaults; returns the resolved config (explicit lossW etc.)."""
    from condattn.models import list_models  # deferred: keep config importable on its own

    m, o = cfg.model, cfg.optim
    models = list_models()
    if m.arch not in models:
        raise ConfigError(f"model.arch={m.arch!r} is not a registered model; valid: {models}")
    if m.aux_model and m.aux_model not in models:
        raise ConfigError(f"model.aux_model={m.aux_model!r} is unknown; valid: {models}")
    if m.widths and len(m.widths) != 4:
        raise ConfigError(f"model.widths needs 4 entries (one per stage), got {m.widths}")
    if not 0.0 <= m.aux_dropout < 1.0:
        raise ConfigError(f"model.aux_dropout must lie in [0, 1), got {m.aux_dropout}")
    if m.variant == "se":  # no heads: aux settings do not apply and are recorded as empty
        m = dataclasses.replace(m, aux_at=(), aux_model="")
        cfg = dataclasses.replace(cfg, model=m, loss=dataclasses.replace(cfg.loss, aux_weights=()))
    elif cfg.num_heads == 0:
        raise ConfigError(f"model.variant={m.variant!r} needs model.aux_at or model.aux_model")
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
    if o.epochs < 1 or o.batch_size < 1 or o.lr <= 0:
        raise ConfigError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {o}")
    if list(o.milestones) != sorted(set(o.milestones)) or any(x < 1 for x in o.milestones):
        raise ConfigError(f"optim.milestones must be increasing epochs >= 1, got {o.milestones}")
    if not 0 <= o.warmup_epochs <= o.epochs:
        raise ConfigError(f"optim.warmup_epochs must lie in [0, epochs], got {o.warmup_epochs}")
    if min(cfg.data.train_subset, cfg.data.test_subset, cfg.system.threads) < 0:
        raise ConfigError("data.train_subset, data.test_subset and system.threads must be >= 0")
    return cfg


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads a recipe and merges its ``base`` chain (paths relative to the including file)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"recipe inheritance cycle: {' -> '.join(map(str, (*seen, path)))}")
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err
    base = d.pop("base", None)
    if base is None:
        return d
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a path string, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: base recipe {base_path} does not exist")
    return _merge(_read_toml(base_path, (*seen, path)), d)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def list_recipes(root: str | os.PathLike[str]) -> list[str]:
    """Recipe files under ``root`` (relative paths), excluding inherited-only ``base*.toml``."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.toml") if p.name != "base.toml")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``key=value`` overrides to a nested recipe dict (returns a new dict).

    ``key`` is ``section.field`` or ``name``, or a bare field name that is unique across
    sections (``epochs=2`` means ``optim.epochs=2``).
    """
    out = _merge(d, {})
    fields = {s: [f.name for f in dataclasses.fields(c)] for s, c in SECTIONS.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, text = (s.strip() for s in item.split("=", 1))
        if key == "name":
            out["name"] = text
            continue
        if "." in key:
            section, name = key.split(".", 1)
        else:
            owners = [s for s, names in fields.items() if key in names]
            if len(owners) != 1:
                valid = sorted(f"{s}.{n}" for s, names in fields.items() for n in names)
                why = "is ambiguous" if owners else "is unknown"
                raise ConfigError(f"override key {key!r} {why}; valid keys: {', '.join(valid)}")
            section, name = owners[0], key
        if section not in fields:
            raise ConfigError(f"unknown section {section!r} in {key!r}; valid: {list(fields)}")
        if name not in fields[section]:
            raise ConfigError(
                f"unknown key {key!r}; valid keys in [{section}]: {', '.join(fields[section])}"
            )
        out.setdefault(section, {})
        out[section] = {**out[section], name: _parse_value(text)}
    return out


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """Reads a recipe (with its ``base`` chain), applies ``overrides`` and validates it.

    Raises:
        ConfigError: the file is missing (the message lists the recipes next to it), is not
            TOML, or holds an unknown key or an invalid value.
    """
    p = Path(path)
    if not p.is_file():
        root = next((q for q in (p.parent, *p.parents) if q.name == "recipes"), Path("recipes"))
        valid = list_recipes(root) if root.is_dir() else []
        hint = f"; recipes in {root}: {', '.join(valid)}" if valid else ""
        raise ConfigError(f"unknown recipe {str(path)!r}: no such file{hint}")
    d = _read_toml(p)
    d.setdefault("name", p.stem)
    return config_from_dict(apply_overrides(d, overrides))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")  # pragma: no cover


def config_to_toml(cfg: TrainConfig) -> str:
    """The resolved config as a self-contained TOML recipe (no ``base``)."""
    d = cfg.to_dict()
    lines = [f"name = {_toml_value(d.pop('name'))}"]
    for section, values in d.items():
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
