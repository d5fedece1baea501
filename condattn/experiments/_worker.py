"""Child-process entry of the local launcher: trains one grid run from a JSON spec.

``python -m condattn.experiments._worker '{"config": {...}, "run_dir": ..., "resume": ...,
"synthetic": ..., "data": ..., "parent_pid": ..., "nproc": ...}'``. The parent
(:mod:`condattn.experiments.launchers.local`) has already checked the run directory and set the
thread budget (and ``CUDA_VISIBLE_DEVICES``) in the environment; this only trains.

A killed ``compare`` takes its children with it: the worker asks the kernel for ``SIGKILL`` when
its parent dies (``PR_SET_PDEATHSIG``, Linux), and exits at once if the parent is already gone.
Its run directory's lock (:mod:`condattn.train.lock`) dies with it, so the next ``compare``
resumes the run from its last checkpoint. With ``nproc > 1`` the worker becomes ``torchrun``
(``exec``, keeping the death signal, as ``SIGTERM``, which torchrun passes to its ranks), whose
ranks run this module again with ``nproc = 1``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

from condattn.experiments.launchers import train_spec


def die_with_parent(parent_pid: int | None, sig: int = signal.SIGKILL) -> None:
    """Gets ``sig`` when the parent process dies (Linux; elsewhere a no-op)."""
    if parent_pid is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl: nobody waits for us
        os._exit(1)


def main(argv: list[str]) -> int:
    """Trains the run described by ``argv[0]``; exits non-zero with the error as the last line."""
    (text,) = argv
    spec = json.loads(text)
    nproc = int(spec.get("nproc", 1))
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        die_with_parent(spec.get("parent_pid"), signal.SIGTERM)
        rank_spec = json.dumps({**spec, "nproc": 1, "parent_pid": None})
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={nproc}", "-m", "condattn.experiments._worker", rank_spec]
        os.execv(sys.executable, cmd)
    die_with_parent(spec.get("parent_pid"))
    train_spec(spec)
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
