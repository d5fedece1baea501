"""Recipes: TOML files with ``base`` inheritance, ``--set`` overrides, and TOML output.

A recipe is a TOML file with up to six tables, one per dataclass of
:mod:`condattn.train.config`::

    base = "../base.toml"        # optional: inherit (deep-merge) from another recipe first
    name = "se_r_resnet50"
    [model]  arch = "se_resnet50"; variant = "se_r"; aux_at = ["layer2", "layer3"] ...
    [loss]   aux_weights = [0.3, 0.3]
    [optim]  lr = 0.1; milestones = [60, 120, 160]; gamma = 0.2 ...   (or [0.3, 0.6, 0.8])
    [data]   train_subset = 0 ...
    [system] seed = 0; precision = "auto" ...
    [paper]  tables = ["3", "4"]; row = "SE-R-ResNet50"; top1 = 79.96

Every key is checked: an unknown key, a value of the wrong type or a value outside a fixed
vocabulary raises :class:`~condattn.train.config.ConfigError` that lists the valid choices.
``--set section.key=value`` (or a bare ``key=value`` when the key name is unique across
sections) overrides one value; the value is parsed as TOML (``0.1``, ``true``, ``[0.3, 0.3]``)
and falls back to a plain string.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from condattn.train.config import (
    CHOICES,
    LEGACY_KEYS,
    SECTIONS,
    ConfigError,
    TrainConfig,
    check_schedule,
    upgrade_keys,
    validate,
)

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_to_toml",
    "list_recipes",
    "load_recipe",
    "recipes_dir",
]

_TOP_LEVEL = ("name", "base", "variants", *SECTIONS)
_PACKAGE = Path(__file__).resolve().parents[1]  # the condattn folder


def recipes_dir() -> Path | None:
    """The recipes that come with condattn: the installed package's copy (``condattn/_recipes``,
    which a wheel holds), else the source checkout's ``recipes/`` (an editable install or a
    checkout on ``sys.path``); None if neither exists."""
    for root in (_PACKAGE / "_recipes", _PACKAGE.parent / "recipes"):
        if (root / "base.toml").is_file():
            return root
    return None


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
    if origin is dict:  # a free-form table such as [model.kwargs]: TOML scalars, lists, tables
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, e.g. {{drop_rate = 0.1}}, got {value!r}")
        try:
            return json.loads(json.dumps(dict(value)))
        except TypeError:
            raise ConfigError(
                f"{where} may hold numbers, strings, booleans, lists and tables; got {value!r}"
            ) from None
    if origin in (typing.Union, types.UnionType) and set(typing.get_args(tp)) == {int, float}:
        return _number(value, where)  # optim.milestones: an epoch or a fraction of the run
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


def _number(value: Any, where: str) -> int | float:
    """An integer or a float, kept as it is written (``60`` stays 60, ``0.3`` stays 0.3)."""
    if isinstance(value, str):
        value = _parse_value(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return value


def _build_section(cls: type, values: Mapping[str, Any], section: str) -> Any:
    values = upgrade_keys(section, dict(values))  # old spellings, e.g. system.bf16
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
        choices = CHOICES.get((section, key))
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
    # [variants.NAME] tables are compare's (named_variants); a run's config does not hold them
    for name, cls in SECTIONS.items():
        values = d.get(name, {})
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{name}] must be a table, got {values!r}")
        sections[name] = _build_section(cls, values, name)
    cfg = TrainConfig(name=str(d.get("name", "run")), **sections)
    return validate(cfg)


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
    sections (``epochs=2`` means ``optim.epochs=2``). ``model.kwargs.drop_rate=0.1`` sets one
    entry of a table field.
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
        entry = ""
        if "." in key:
            section, name = key.split(".", 1)
            name, _, entry = name.partition(".")  # model.kwargs.drop_rate: one table entry
        else:
            owners = [s for s, names in fields.items() if key in names]
            if len(owners) != 1:
                valid = sorted(f"{s}.{n}" for s, names in fields.items() for n in names)
                why = "is ambiguous" if owners else "is unknown"
                raise ConfigError(f"override key {key!r} {why}; valid keys: {', '.join(valid)}")
            section, name = owners[0], key
        if (section, name) in LEGACY_KEYS:  # an old spelling: system.bf16=true -> precision=bf16
            name, mapping = LEGACY_KEYS[section, name]
            text = str(mapping.get(_parse_value(text), text))
        if section not in fields:
            raise ConfigError(f"unknown section {section!r} in {key!r}; valid: {list(fields)}")
        if name not in fields[section]:
            raise ConfigError(
                f"unknown key {key!r}; valid keys in [{section}]: {', '.join(fields[section])}"
            )
        out.setdefault(section, {})
        old = [k for (sec, k), (new, _) in LEGACY_KEYS.items() if (sec, new) == (section, name)]
        out[section] = {k: v for k, v in out[section].items() if k not in old}  # the override wins
        value = _parse_value(text)
        if entry:
            if typing.get_origin(typing.get_type_hints(SECTIONS[section])[name]) is not dict:
                raise ConfigError(f"{section}.{name} is not a table; write {section}.{name}=VALUE")
            value = {**dict(out[section].get(name) or {}), entry: value}
        out[section] = {**out[section], name: value}
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
        if not root.is_dir():
            root = recipes_dir() or root
        valid = list_recipes(root) if root.is_dir() else []
        hint = f"; recipes in {root}: {', '.join(valid)}" if valid else ""
        raise ConfigError(f"unknown recipe {str(path)!r}: no such file{hint}")
    d = _read_toml(p)
    d.pop("launcher", None)  # how to run, not what: condattn.experiments.launchers reads it
    d.setdefault("name", p.stem)
    cfg = config_from_dict(apply_overrides(d, overrides))
    check_schedule(cfg.optim)  # a recipe to train: its lr steps must fall inside the run
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):  # an inline table, e.g. model.kwargs
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")  # pragma: no cover


def config_to_toml(cfg: TrainConfig) -> str:
    """The resolved config as a self-contained TOML recipe (no ``base``)."""
    d = cfg.to_dict()
    lines = [f"name = {_toml_value(d.pop('name'))}"]
    for section, values in d.items():
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
