"""Named variants: a recipe's ``[variants.NAME]`` tables, for ``condattn compare``.

Beyond the three built-in variants (``se``, ``se_a``, ``se_r``: ``model.variant``), a recipe can
name variants that start from one of them and change some keys; the controls of SE-R are the
main use (docs/howto-compare.md, "Controls")::

    [variants.se_r_shuffled]
    base = "se_r"
    model.cond = "shuffled"     # T of another image: does it have to be this image's result?

    [variants.se_r_features]
    base = "se_r"
    model.cond = "features"     # the head's hidden activations: richer information than T

``compare --variants se_a,se_r,se_r_shuffled`` then trains ``OUT/se_r_shuffled/seed<k>`` as
``model.variant = "se_r"`` plus the table's keys, paired by seed with the others.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from condattn.train.config import VARIANTS, ConfigError

__all__ = ["NamedVariant", "named_variants", "variant_overrides"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class NamedVariant:
    name: str
    base: str  # one of VARIANTS
    overrides: tuple[str, ...]  # "section.key=TOML value", applied after model.variant=base


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key.count(".") < 1:  # section -> keys
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _parse(name: str, table: Any, where: str) -> NamedVariant:
    from condattn.train.recipe import _toml_value

    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: [variants.{name}] must be a table, got {table!r}")
    if name in VARIANTS or not _NAME.match(name):
        raise ConfigError(
            f"{where}: variant name {name!r} must be new (not {', '.join(VARIANTS)}) and made of "
            "lower-case letters, digits and _"
        )
    base = table.get("base")
    if base not in VARIANTS:
        raise ConfigError(
            f"{where}: [variants.{name}] needs base = one of {', '.join(VARIANTS)}, got {base!r}"
        )
    items = _flatten({k: v for k, v in table.items() if k != "base"})
    if not items:
        raise ConfigError(f"{where}: [variants.{name}] changes nothing beyond base = {base!r}")
    for key, _ in items:
        if key in ("model.variant", "system.seed") or "." not in key:
            raise ConfigError(
                f"{where}: [variants.{name}] sets {key!r}; a variant sets section keys such as "
                "model.cond (its base sets model.variant, --seeds sets the seed)"
            )
    return NamedVariant(name, base, tuple(f"{k}={_toml_value(v)}" for k, v in items))


def named_variants(recipe: str | os.PathLike[str]) -> dict[str, NamedVariant]:
    """The ``[variants.NAME]`` tables of ``recipe`` (and its ``base`` chain), checked."""
    from condattn.train.recipe import _read_toml

    path = Path(recipe)
    if not path.is_file():
        return {}
    tables = _read_toml(path).get("variants", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(f"{path}: variants must be tables [variants.NAME], got {tables!r}")
    return {name: _parse(name, t, str(path)) for name, t in tables.items()}


def variant_overrides(name: str, named: Mapping[str, NamedVariant]) -> list[str]:
    """The overrides that make a run of variant ``name`` (built-in or named)."""
    if name in VARIANTS:
        return [f"model.variant={name}"]
    v = named[name]
    return [f"model.variant={v.base}", *v.overrides]
