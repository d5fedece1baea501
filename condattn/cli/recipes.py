"""``condattn recipes``: the recipes that come with condattn, one line each (name, description).

The description is the first sentence of the recipe file's leading comment. A name works as it is in
``condattn train NAME`` and ``condattn compare NAME``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from condattn.cli._common import UserError

__all__ = ["HELP", "add_arguments", "describe", "run"]

HELP = "list the recipes that come with condattn (name and description)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", action="store_true", help="also print the folder they are in")


def describe(path: Path, *, width: int = 100) -> str:
    """The first sentence of a recipe's leading comment (its description), cut to ``width``."""
    words = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("#"):
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    end = text.find(". ")
    text = text if end < 0 else text[: end + 1]
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def run(args: argparse.Namespace) -> int:
    from condattn.train.recipe import list_recipes, recipes_dir

    root = recipes_dir()
    if root is None:
        raise UserError("this installation of condattn has no recipes (a broken install?)")
    names = list_recipes(root)
    width = max((len(n.removesuffix(".toml")) for n in names), default=0)
    if args.path:
        print(f"recipes in {root}:")
    for name in names:
        print(f"{name.removesuffix('.toml'):<{width}}  {describe(root / name)}".rstrip())
    return 0
