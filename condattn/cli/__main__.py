"""``python -m condattn.cli``: the ``condattn`` command."""

import sys

from condattn.cli import main

sys.exit(main())
