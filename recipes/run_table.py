"""Replaced by ``condattn table``: this forwards its arguments there (kept for old commands).

Usage::

    python recipes/run_table.py 3 --seeds 3          # = condattn table 3 --seeds 3
    condattn table 3 --seeds 3 --launcher slurm      # the same grid on a SLURM cluster

See ``condattn table --help`` and docs/howto-cluster.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from condattn.cli import main

if __name__ == "__main__":
    sys.exit(main(["table", *sys.argv[1:]]))
