"""condattn's version and the ``condattn --version`` line, torch-free.

``condattn --version`` is answered by :func:`condattn._omp_env.answer_version_flag` while the
package starts to import, before anything loads torch (importing torch takes seconds); the
versions of torch and Python are read from the installed metadata, not from torch itself.
"""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["__version__", "version_line"]

__version__ = "0.2.0"


def version_line() -> str:
    """``condattn 0.2.0 (torch 2.x, python 3.11.y)``."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    return f"condattn {__version__} (torch {torch}, python {platform.python_version()})"
