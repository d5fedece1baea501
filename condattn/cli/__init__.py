"""The ``condattn`` command line: train, eval, report, compare, profile and analyze.

One module per command (``condattn/cli/<command>.py``, each with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``), listed in :data:`COMMANDS`; add a command there. What they share is in
:mod:`condattn.cli._common`.

Examples::

    condattn train recipes/quick.toml
    condattn train recipes/table3/se_r_resnet50.toml --set system.seed=1 --out runs/x
    condattn train recipes/quick.toml --out runs/q --resume          # continue a killed run
    torchrun --nproc_per_node=2 -m condattn.cli train recipes/quick.toml
    condattn eval runs/quick/checkpoint.pt
    condattn report runs/se_resnet50 runs/se_r_resnet50 --plot cmp.png   # --overwrite replaces
    condattn compare recipes/quick.toml --variants se,se_a,se_r --seeds 0,1,2 --jobs 2
    condattn compare recipes/quick.toml --launcher slurm --time 4:00:00 --no-wait
    condattn table 3 --seeds 5 --launcher slurm --dry-run              # the array job
    condattn report runs/compare/quick                                # a compare directory
    condattn profile se_resnet50 --variant se_r --rules paper
    condattn analyze runs/se_resnet50/checkpoint.pt runs/se_r_resnet50/checkpoint.pt
    condattn recipes                                                  # the recipes, one line each
    condattn --version

Every mistake (a bad file, flag, recipe value or environment) ends in one line on stderr,
``condattn COMMAND: error: ...``, and exit status 2. Commands write only where told (``--out``,
``--plot``) or into the run directory, and never replace a file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from condattn.cli import analyze, compare, profile, recipes, report, table, train
from condattn.cli import eval as eval_
from condattn.cli._common import UserError, check_device, console_logging

__all__ = ["COMMANDS", "UserError", "build_parser", "check_device", "main"]

_Add = Callable[[argparse.ArgumentParser], None]
_Run = Callable[[argparse.Namespace], int]

# name -> (help, add_arguments, run); add a subcommand by adding an entry.
COMMANDS: dict[str, tuple[str, _Add, _Run]] = {
    m.__name__.rsplit(".", 1)[1]: (m.HELP, m.add_arguments, m.run)
    for m in (train, eval_, report, compare, table, profile, analyze, recipes)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="condattn", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, add, _run) in COMMANDS.items():
        add(sub.add_parser(name, help=help_))
    return parser


def _version() -> str:
    from condattn._version import version_line

    return version_line()  # the same line the console script prints before torch loads


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``condattn`` console script; returns the exit status."""
    from condattn.data import CifarDataError
    from condattn.train.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        with console_logging():
            return COMMANDS[args.command][2](args)
    except BrokenPipeError:  # `condattn recipes | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush is quiet
        return 0
    except (UserError, ConfigError, CifarDataError, ValueError, FileNotFoundError) as err:
        # ValueError covers the library's own argument checks (e.g. ConversionError), whose
        # messages name the valid choices.
        print(f"condattn {args.command}: error: {err}", file=sys.stderr)
        return 2
