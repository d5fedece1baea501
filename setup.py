"""The package layout, beside pyproject.toml's metadata: the ``condattn`` packages, and the
top-level ``recipes/`` folder shipped inside the package as ``condattn/_recipes`` (recipe files
only), so that an installed wheel finds its recipes (:func:`condattn.train.recipe.recipes_dir`).
The recipes stay in one place in git; a checkout or an editable install reads ``recipes/``.

The constants are read by ``tests/test_packaging.py`` without building anything.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

RECIPES = "condattn._recipes"
PACKAGES = [*find_packages(include=["condattn", "condattn.*"]), RECIPES]
PACKAGE_DIR = {RECIPES: "recipes"}
# Recursive globs: recipes/*.toml, recipes/table3/*.toml, ... (base.toml included: bases
# resolve relative to the including file, inside the package as in the checkout).
PACKAGE_DATA = {"condattn": ["py.typed"], RECIPES: ["*.toml", "**/*.toml", "README.md"]}


class BuildPy(build_py):
    """Ships no Python module from ``recipes/``: ``run_table.py`` is a script of the checkout."""

    def find_package_modules(self, package, package_dir):
        if package == RECIPES:
            return []
        return super().find_package_modules(package, package_dir)


if __name__ == "__main__":
    setup(
        packages=PACKAGES,
        package_dir=PACKAGE_DIR,
        package_data=PACKAGE_DATA,
        cmdclass={"build_py": BuildPy},
    )
