"""Child-process entry of ``compare --jobs N``: trains one grid run from a JSON spec.

``python -m condattn.experiments._worker '{"config": {...}, "run_dir": ..., "resume": ...,
"synthetic": ..., "data": ...}'``. The parent (:mod:`condattn.experiments.grid`) has already
checked the run directory and set the thread budget in the environment; this only trains.
"""

from __future__ import annotations

import json
import logging
import sys

from condattn.train import config_from_dict, train
from condattn.train.build import load_data


def main(argv: list[str]) -> int:
    """Trains the run described by ``argv[0]``; exits non-zero with the error as the last line."""
    (text,) = argv
    spec = json.loads(text)
    cfg = config_from_dict(spec["config"])
    data = load_data(cfg, root=spec["data"], synthetic=spec["synthetic"])
    train(cfg, data=data, run_dir=spec["run_dir"], resume=spec["resume"])
    return 0


if __name__ == "__main__":
    # The run's lines into this process's output: the grid's log file for this run.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("condattn").addHandler(handler)
    logging.getLogger("condattn").setLevel(logging.INFO)
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as err:  # the parent shows the last line; the traceback stays in the log
        import traceback

        traceback.print_exc()
        print(f"{type(err).__name__}: {err}", flush=True)
        sys.exit(1)
