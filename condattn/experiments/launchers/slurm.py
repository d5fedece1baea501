"""The SLURM launcher: one submitit array job per grid, one task per run.

Each task runs :func:`~condattn.experiments.launchers.train_spec` on its run directory. The task
is a :class:`submitit.helpers.Checkpointable`: when SLURM signals a time limit or a preemption
(``USR2``, ``signal_delay_s`` before the end), submitit requeues it, and the requeued task resumes
from the run's last ``checkpoint.pt`` (exactly: see :mod:`condattn.train.loop`). The run
directory's lock (:mod:`condattn.train.lock`) makes sure a requeued task never trains alongside
its predecessor.

State lives in ``OUT/slurm/``: the submitit logs (``<job>_<task>_log.out/.err``) and
``jobs.json`` (run -> array task id). Each call checks every run it lacks: ``squeue`` for its
task (queued or running), the run directory (done, or locked: running), else failed, named with its
log; runs without a live task are submitted together as one new array job. With ``wait=False``
(``--no-wait``) the call returns at once; running it again reports the states and, once all
are done, the grid goes on to its summary. No accounting (``sacct``) is needed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SlurmLauncher", "SlurmOptions", "TrainTask", "parse_time"]

logger = logging.getLogger(__name__)  # states and submissions (INFO)

# How often a waiting launcher asks squeue (seconds); a module constant so tests can shrink it.
POLL_S = 5.0
_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}


def parse_time(value: int | str) -> int:
    """A SLURM time limit in minutes: ``90``, ``"90"``, ``"1:30:00"``, ``"2-00:00:00"``."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        minutes = parts[0]
    elif len(parts) == 2:  # MM:SS
        minutes = parts[0] + (parts[1] > 0)
    else:
        minutes = parts[0] * 60 + parts[1] + (parts[2] > 0)
    return minutes + (int(days) * 1440 if days else 0)


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """Resources of each run and how to submit; flags override the recipe's ``[launcher.slurm]``.

    Attributes:
        partition: ``--partition`` (None: the cluster's default).
        time: time limit per run (minutes or ``HH:MM:SS``); longer runs are requeued and resume.
        gpus_per_run: GPUs of each run; > 1 runs one DDP process per GPU (SLURM tasks).
        tasks_per_run: DDP processes of each run (default: ``max(1, gpus_per_run)``); 2 on a CPU
            cluster runs 2 gloo processes.
        cpus_per_run: CPU cores of each run's process (its ``system.threads``).
        mem_gb: memory per run (None: the partition's default).
        account: ``--account``.
        qos: ``--qos``.
        extra: extra ``#SBATCH`` lines, e.g. ``["--constraint=a100", "--exclude=node3"]``.
        max_requeues: time-outs a run may be requeued after (preemptions are not counted).
        signal_delay_s: seconds before the time limit at which SLURM sends ``USR2``.
        array_parallelism: at most this many runs of the array at once.
        wait: wait for the runs (False: submit and return; call again to collect).
        dry_run: print the array job, submit nothing.
    """

    partition: str | None = None
    time: int | str = 60
    gpus_per_run: int = 0
    tasks_per_run: int | None = None
    cpus_per_run: int = 1
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    extra: tuple[str, ...] = ()
    max_requeues: int = 10
    signal_delay_s: int = 90
    array_parallelism: int = 256
    wait: bool = True
    dry_run: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SlurmOptions:
        """From a mapping of field names (None values are skipped; unknown names refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k.replace("-", "_"): v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - names - {"jobs", "runs_per_gpu"})
        if unknown:
            raise ValueError(
                f"[launcher.slurm]: unknown key(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(names))}"
            )
        kept = {k: v for k, v in given.items() if k in names}
        if "extra" in kept:
            extra = kept["extra"]
            kept["extra"] = (extra,) if isinstance(extra, str) else tuple(extra)
        return cls(**kept)

    @property
    def tasks(self) -> int:
        return self.tasks_per_run or max(1, self.gpus_per_run)

    def executor_parameters(self, *, job_name: str) -> dict[str, Any]:
        """The submitit ``SlurmExecutor`` parameters of these options."""
        from condattn.experiments.launchers import child_pythonpath

        extra: dict[str, Any] = {}
        for line in self.extra:
            key, _, value = line.strip().removeprefix("#SBATCH").strip().lstrip("-").partition("=")
            extra[key.replace("-", "_")] = value if value else True
        params: dict[str, Any] = {
            "job_name": job_name,
            "time": parse_time(self.time),
            "ntasks_per_node": self.tasks,
            "cpus_per_task": self.cpus_per_run,
            "signal_delay_s": self.signal_delay_s,
            "array_parallelism": self.array_parallelism,
            "setup": [
                f"export PYTHONPATH={child_pythonpath()}",
                f"export OMP_NUM_THREADS={self.cpus_per_run} MKL_NUM_THREADS={self.cpus_per_run}",
            ],
        }
        optional = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "gpus_per_node": self.gpus_per_run or None,
            "mem": f"{self.mem_gb:g}GB" if self.mem_gb else None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        if extra:
            params["additional_parameters"] = extra
        return params


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ValueError("--launcher slurm needs submitit: pip install 'condattn[slurm]'") from None
    return submitit


try:
    from submitit.helpers import Checkpointable as _TaskBase
except ImportError:  # the launcher says what to install when it is used
    _TaskBase = object  # type: ignore[assignment,misc]


class TrainTask(_TaskBase):
    """The array task: trains one run directory; requeued by submitit, it resumes.

    A :class:`submitit.helpers.Checkpointable`: ``checkpoint`` resubmits the same spec, and the
    run's ``checkpoint.pt`` holds the progress.
    """

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        from condattn.experiments.launchers import train_spec

        _ddp_env_from_slurm()
        _log_to_stdout()
        res = train_spec(spec, lock_wait_s=120.0)
        return {"final": res.get("final"), "run_dir": spec["run_dir"]}

    def checkpoint(self, spec: dict[str, Any]) -> Any:
        """What submitit requeues: the same task and spec (train_spec resumes the run)."""
        return _submitit().helpers.DelayedSubmission(self, spec)


def _log_to_stdout() -> None:
    """The run's lines into the task's output (``OUT/slurm/<job>_<task>_log.out``)."""
    root = logging.getLogger("condattn")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _ddp_env_from_slurm() -> None:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` for a run of several SLURM tasks, so
    that :mod:`condattn.train.distributed` starts its process group as under torchrun."""
    env = _submitit().JobEnvironment()
    if env.num_tasks <= 1:
        return
    job = int(os.environ.get("SLURM_JOB_ID", "0"))
    os.environ.update(
        {
            "RANK": str(env.global_rank),
            "WORLD_SIZE": str(env.num_tasks),
            "LOCAL_RANK": str(env.local_rank),
            "MASTER_ADDR": env.hostnames[0],
            "MASTER_PORT": str(20000 + job % 20000),
        }
    )


class SlurmLauncher:
    """Runs a grid as one SLURM array job through submitit (see the module docstring)."""

    name = "slurm"

    def __init__(self, options: SlurmOptions) -> None:
        self.options = options

    @property
    def threads(self) -> int:
        """Threads of each run: its CPUs."""
        return self.options.cpus_per_run

    def launch(
        self,
        runs: Sequence[Any],
        *,
        states: Mapping[str, str],
        synthetic: bool,
        data_root: str | None,
        data: Any,
    ) -> dict[str, Any]:
        """Submits what has no live task, then waits (or not); each run's status."""
        from condattn.experiments.launchers import RunStatus, run_spec

        if not runs:
            return {}
        folder = runs[0].run_dir.parents[1] / "slurm"
        if self.options.dry_run:
            self._print_array(runs, folder)
            return {r.label: RunStatus(r.label, "done", "dry run") for r in runs}
        if shutil.which("sbatch") is None:
            raise ValueError("--launcher slurm: no sbatch on PATH; run on a SLURM login node")
        jobs = _read_jobs(folder)
        statuses = self._check(runs, jobs, folder)
        todo = [r for r in runs if r.label not in statuses]
        if todo:
            specs = [
                run_spec(
                    r, resume=states[r.label] == "resume", synthetic=synthetic, data_root=data_root
                )
                for r in todo
            ]
            ids = self._submit(specs, folder)
            for r, job_id in zip(todo, ids):
                jobs[r.label] = job_id
                statuses[r.label] = RunStatus(r.label, "queued", f"job {job_id}")
            _write_jobs(folder, jobs)
            logger.info(
                f"slurm: submitted {len(todo)} run(s) as array job "
                f"{ids[0].split('_')[0]} (logs: {folder})"
            )
        shown: dict[str, str] = {}
        while True:
            for label, s in statuses.items():
                if shown.get(label) != s.state:
                    logger.info(f"slurm: {label}: {s.state}{f' ({s.detail})' if s.detail else ''}")
                    shown[label] = s.state
            if not self.options.wait or all(
                s.state in ("done", "failed") for s in statuses.values()
            ):
                break
            time.sleep(POLL_S)
            statuses = self._check(runs, jobs, folder)
        for label, s in statuses.items():  # a failed run is submitted again by the next call
            if s.state == "failed":
                jobs.pop(label, None)
        _write_jobs(folder, jobs)
        return statuses

    def _check(self, runs: Sequence[Any], jobs: dict[str, str], folder: Path) -> dict[str, Any]:
        """The status of each run that has (or had) a task; runs with none are left out."""
        from condattn.experiments.launchers import RunStatus
        from condattn.train.lock import is_locked

        queue = _squeue({j.split("_")[0] for j in jobs.values()})
        out = {}
        for r in runs:
            job = jobs.get(r.label)
            if (r.run_dir / "results.json").is_file() and not is_locked(r.run_dir):
                out[r.label] = RunStatus(r.label, "done", f"job {job}" if job else "")
            elif job is not None and job in queue:
                state = "queued" if queue[job] in _QUEUED else "running"
                out[r.label] = RunStatus(r.label, state, f"job {job}")
            elif is_locked(r.run_dir):
                out[r.label] = RunStatus(r.label, "running", "its lock is held")
            elif job is not None:
                out[r.label] = RunStatus(r.label, "failed", _failure(r, job, folder))
        return out

    def _executor(self, folder: Path) -> Any:
        submitit = _submitit()
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.options.max_requeues)
        ex.update_parameters(
            **self.options.executor_parameters(job_name=f"condattn-{folder.parent.name}")
        )
        return ex

    def _submit(self, specs: list[dict[str, Any]], folder: Path) -> list[str]:
        ex = self._executor(folder)
        task = TrainTask()
        with ex.batch():
            jobs = [ex.submit(task, spec) for spec in specs]
        return [str(j.job_id) for j in jobs]

    def _print_array(self, runs, folder: Path) -> None:
        """Prints (stdout: it is the command's output) the array job it would submit."""
        from submitit.slurm.slurm import _make_sbatch_string

        ex = self._executor(folder)
        text = _make_sbatch_string(
            command=ex._submitit_command_str, folder=ex.folder, map_count=len(runs), **ex.parameters
        )
        print(
            f"dry run: the array job of {len(runs)} task(s) that --launcher slurm would submit:\n"
        )
        print(text)
        print("# tasks (one run directory each; requeued on time limit/preemption, resumed):")
        for i, r in enumerate(runs):
            print(f"#   {i}: {r.label} -> {r.run_dir}", flush=True)


def _squeue(job_ids: set[str]) -> dict[str, str]:
    """``{array task id: SLURM state}`` of the live tasks of ``job_ids`` (array tasks expanded)."""
    if not job_ids:
        return {}
    proc = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(sorted(job_ids))],
        capture_output=True,
        text=True,
        check=False,
    )
    out = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            out[job] = state
    return out


def _failure(run: Any, job: str, folder: Path) -> str:
    """The failure line of a run whose task ended without results: the Python error, and the log."""
    err = folder / f"{job}_0_log.err"
    text = err.read_text(errors="replace") if err.is_file() else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if _PY_ERROR.match(ln)]
    why = (errors or lines or ["(no output)"])[-1]
    return f"run {run.label} failed in SLURM job {job}: {why} (log: {err})"


_PY_ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")


def _read_jobs(folder: Path) -> dict[str, str]:
    path = folder / "jobs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_jobs(folder: Path, jobs: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobs.json").write_text(json.dumps(jobs, indent=2) + "\n")
