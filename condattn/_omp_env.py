"""The OpenMP environment of the ``condattn`` command, set before torch loads.

OpenMP reads its environment when the library is loaded, so later settings do nothing. This
module is imported first of all by ``condattn/__init__.py``: when this process is the
``condattn`` command (console script or ``python -m condattn.cli``), it shortens OpenMP's
spin-waiting (:func:`apply_thread_env`); a program that merely imports condattn keeps its
environment as it is. It must never import torch, and this is the only import-time work of the
package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "THREAD_ENV_DEFAULTS",
    "apply_thread_env",
    "apply_thread_env_for_cli",
    "is_cli_process",
    "set_by_condattn",
    "thread_env_record",
]

# Set before torch loads unless the user set them (or OMP_WAIT_POLICY, which they would override).
# Threads that wait for work spin briefly, then sleep. OpenMP's default spin (GNU: 300,000 turns,
# milliseconds) steals the cores of a shared machine from the thread being waited for; a passive
# policy (no spin) cost 23% of a quiet train step on a 2-core VM, where 10,000 turns cost 1%
# (docs/results.md, "Speed"). KMP_BLOCKTIME (ms) is the same knob of Intel's OpenMP (not
# measured here: torch's pip wheels use GNU OpenMP).
THREAD_ENV_DEFAULTS: dict[str, str] = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}

# What apply_thread_env did in this process (logged in environment.json).
_THREAD_ENV: dict[str, Any] = {"applied": False, "set": {}, "torch_loaded_before": None}


def apply_thread_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Sets :data:`THREAD_ENV_DEFAULTS` in ``environ`` (default ``os.environ``) where unset.

    A variable the user has set (even to an empty string) is left alone, and so is everything
    when the user set ``OMP_WAIT_POLICY`` (a spin count would override it). Call it before torch
    is imported; when torch is already loaded it still sets the variables (child processes see
    them) but they cannot change this process, and :func:`thread_env_record` says so.

    Returns:
        The variables it set, name -> value.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env:
        new: dict[str, str] = {}
    else:
        new = {k: v for k, v in THREAD_ENV_DEFAULTS.items() if k not in env}
    env.update(new)
    if environ is None:
        _THREAD_ENV.update(applied=True, torch_loaded_before="torch" in sys.modules)
        _THREAD_ENV["set"] = {**_THREAD_ENV["set"], **new}
    return new


def is_cli_process(argv: Sequence[str], orig_argv: Sequence[str]) -> bool:
    """Whether this process runs the ``condattn`` command (console script or ``-m condattn.cli``).

    Args:
        argv: ``sys.argv``.
        orig_argv: ``sys.orig_argv`` (the interpreter's own command line, Python >= 3.10).
    """
    if argv and Path(argv[0]).name == "condattn":
        return True
    args = list(orig_argv)
    return any(a == "-m" and args[i + 1 : i + 2] == ["condattn.cli"] for i, a in enumerate(args))


def apply_thread_env_for_cli() -> dict[str, str]:
    """:func:`apply_thread_env` when this process is the ``condattn`` command, else nothing.

    ``condattn/__init__.py`` calls it first thing, so the command's settings precede torch's
    import while a program that merely imports condattn keeps its own environment.
    """
    if not is_cli_process(sys.argv, getattr(sys, "orig_argv", ())):
        return {}
    return apply_thread_env()


def thread_env_record(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The OpenMP-related environment now and what condattn set, for ``environment.json``."""
    env = os.environ if environ is None else environ
    names = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")
    return {
        "env": {k: env.get(k) for k in names},
        "set_by_condattn": dict(_THREAD_ENV["set"]),
        # True: set after torch loaded, so it did not apply to this process.
        "torch_loaded_before": _THREAD_ENV["torch_loaded_before"],
    }


def set_by_condattn() -> dict[str, str]:
    """The variables :func:`apply_thread_env` set in this process's environment."""
    return dict(_THREAD_ENV["set"])


apply_thread_env_for_cli()
