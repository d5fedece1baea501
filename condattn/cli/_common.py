"""What the commands share: :class:`UserError`, device checks, ``--data`` help, recipe lookup,
and the console's log handler (:func:`console_logging`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from condattn._io import logging_to

__all__ = [
    "DATA_HELP",
    "UserError",
    "add_overrides",
    "check_device",
    "console_logging",
    "resolve_recipe",
]


class UserError(Exception):
    """A mistake on the command line; printed without a traceback."""


def check_device(requested: str, *, flag: str) -> None:
    """Refuses a CUDA device that this torch cannot see, in one line naming ``flag``."""
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        build = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
        raise UserError(
            f"{flag}={requested} but torch {torch.__version__} (built {build}) sees no CUDA "
            f"device; use {flag}=cpu or {flag}=auto"
        )


# --data of train, eval and compare: the same meaning as data.root.
DATA_HELP = (
    "data.root: a CIFAR-100/CIFAR-10 folder or .tar.gz, or an image folder with train/ and val/ "
    "class folders (data.dataset says which; default: the recipe's data.root, else "
    "$CONDATTN_DATA, and for CIFAR ./data and ../shared/data)"
)


def add_overrides(p: argparse.ArgumentParser, *, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` of train and compare."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )


def resolve_recipe(name: str) -> str:
    """A recipe path as given, or looked up in ./recipes and in condattn's own recipes
    (:func:`condattn.train.recipe.recipes_dir`: the checkout's ``recipes/`` or the installed
    package's copy); ``.toml`` is optional and a leading ``recipes/`` is allowed."""
    from condattn.train.recipe import recipes_dir

    if Path(name).is_file():
        return name
    short = name.removeprefix("recipes/")
    roots = [Path.cwd() / "recipes"]
    if (own := recipes_dir()) is not None:
        roots.append(own)
    for root in roots:
        for rel in dict.fromkeys((name, short)):
            for cand in (root / rel, root / f"{rel}.toml"):
                if cand.is_file():
                    return str(cand)
    return name  # load_recipe raises with the list of recipes


class _Console(logging.Handler):
    """The library's log lines as plain messages: data loading's progress on stderr, everything
    else (training, comparisons) on stdout, written as ``tqdm.write`` does, so that a progress
    bar on the terminal stays intact. The streams are looked up per line (tests swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            stream = sys.stderr if record.name.startswith("condattn.data") else sys.stdout
            with tqdm.external_write_mode(file=stream):  # clears and redraws open bars
                print(self.format(record), file=stream, flush=True)
        except Exception:  # pragma: no cover - logging's own convention
            self.handleError(record)


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """Shows the ``condattn`` loggers' INFO lines on the console while a command runs."""
    handler = _Console()
    handler.setFormatter(logging.Formatter("%(message)s"))
    with logging_to(handler):
        yield
