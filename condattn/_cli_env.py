"""Imported first of all by ``condattn/__init__.py``: when this process is the ``condattn``
command, sets OpenMP's wait policy before torch loads (:func:`condattn._hw.apply_thread_env`).

A program that merely imports condattn keeps its environment as it is.
"""

from condattn._hw import apply_thread_env_for_cli

apply_thread_env_for_cli()
