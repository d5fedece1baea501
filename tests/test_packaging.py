"""An installed package finds its recipes: the packaging maps recipes/ into the wheel, and the
``condattn recipes`` command lists them (a full wheel build is the slow test)."""

from __future__ import annotations

import fnmatch
import runpy
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from condattn.cli import main
from condattn.train.recipe import list_recipes, load_recipe, recipes_dir

REPO = Path(__file__).resolve().parents[1]


def _layout() -> dict:
    """setup.py's constants, read without building (``setup()`` runs only as ``__main__``)."""
    return runpy.run_path(str(REPO / "setup.py"), run_name="layout")


def test_setup_ships_every_recipe_inside_the_package() -> None:
    layout = _layout()
    package = layout["RECIPES"]
    assert package == "condattn._recipes" and package in layout["PACKAGES"]
    root = REPO / layout["PACKAGE_DIR"][package]
    assert root == REPO / "recipes"
    patterns = layout["PACKAGE_DATA"][package]
    files = [p.relative_to(root).as_posix() for p in root.rglob("*.toml")]
    assert "base.toml" in files and "quick.toml" in files and "table3/se_r_resnet50.toml" in files
    for rel in files:  # every recipe, the bases included, matches a package-data pattern
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel


def test_recipes_dir_is_the_checkout_here_and_bases_resolve() -> None:
    assert recipes_dir() == REPO / "recipes"
    cfg = load_recipe(recipes_dir() / "table3" / "se_r_resnet50.toml")  # base = "../base.toml"
    assert cfg.model.arch == "se_resnet50"


def test_recipes_command_lists_names_and_descriptions(capsys) -> None:
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {line.split()[0]: line for line in lines}
    assert "quick" in names and "A few-minute CPU smoke run" in names["quick"]
    assert "table3/se_r_resnet50" in names and "base" not in names
    assert len(lines) == len(list_recipes(REPO / "recipes"))


@pytest.mark.slow
def test_wheel_holds_the_recipes(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("condattn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in ("base.toml", "quick.toml", "table3/se_r_resnet50.toml"):
        assert f"condattn/_recipes/{rel}" in names
    assert "condattn/_recipes/run_table.py" not in names  # a script of the checkout
    assert "condattn/cli/__main__.py" in names
