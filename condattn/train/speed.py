"""Hardware capabilities, and the speed choices made from them once at start-up (design §5).

Two steps, each testable on its own:

1. :func:`detect` reads what the machine offers (:class:`Capabilities`): the device, the CPU's
   bf16 instructions (``/proc/cpuinfo`` flags), CUDA bf16 support, and the cores this process may
   really use (CPU affinity, cgroup v2 ``cpu.max`` or v1 CFS quota).
2. :func:`decide` is one pure function of (capabilities, ``[system]`` config) that returns the
   :class:`SpeedPlan`: precision, memory format, compile mode and thread count, each with the
   reason. The training loop logs the plan in ``environment.json``; every ``"auto"`` can be
   overridden in the recipe or with ``--set``.

With ``threads = 0`` on a CPU, :class:`~condattn.train.governor.ThreadGovernor` then fits the
thread count, while the run goes, to the cores that other processes leave free (a shared
machine). The OpenMP environment, which must be set before torch loads, is
:mod:`condattn._omp_env`.

This module imports torch only inside functions.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from condattn._omp_env import set_by_condattn

__all__ = [
    "CHANNELS_LAST",
    "COMPILE_MIN_STEPS",
    "COMPILE_MODES",
    "PRECISIONS",
    "Capabilities",
    "SpeedPlan",
    "available_cores",
    "cpu_flags",
    "decide",
    "detect",
    "read_text",
]

# The vocabularies of the [system] keys decided here ("auto" = decide from the capabilities).
PRECISIONS = ("auto", "fp32", "bf16")
CHANNELS_LAST = ("auto", "on", "off")
COMPILE_MODES = (
    "auto",
    "off",
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)
# compile="auto" compiles runs of at least this many train steps on a GPU. Compiling a train step
# takes minutes, so it pays back only over long runs: the paper's recipes (78,000 steps) compile,
# the quick recipe (234 steps) does not. On CPU, auto never compiles: inductor saved about 1% of
# a bf16 train step (docs/results.md, The default loop), less than its compile time pays back.
COMPILE_MIN_STEPS = 10_000
# CPU flags (/proc/cpuinfo) of instructions that run bf16 matrix maths natively: Intel AMX and
# AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and later). Elsewhere bf16 is emulated.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


# --- 1. capabilities -------------------------------------------------------------------------


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The CPU feature flags in the text of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def read_text(path: Path) -> str | None:
    """The text of ``path``, or None when it cannot be read (e.g. no ``/proc``)."""
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_quota(cgroup_root: Path, proc_cgroup: str) -> tuple[float, str] | None:
    """The CPU quota of this process's cgroup in cores (None: unlimited or unknown).

    cgroup v2: ``cpu.max`` (``"max 100000"`` or ``"<quota> <period>"``) of the process's group
    and its ancestors (the smallest wins). v1: ``cpu.cfs_quota_us / cpu.cfs_period_us`` (quota -1
    is unlimited) under the ``cpu`` controller's mount.
    """
    best: tuple[float, str] | None = None
    for line in proc_cgroup.splitlines():
        _id, controllers, path = line.split(":", 2)
        rel = path.strip().lstrip("/")
        if controllers == "":  # v2 unified hierarchy
            folders = [cgroup_root / rel, *(cgroup_root / rel).parents]
            for folder in folders:
                if not folder.is_relative_to(cgroup_root):
                    break
                parts = (read_text(folder / "cpu.max") or "").split()
                if len(parts) == 2 and parts[0] != "max":
                    cores = int(parts[0]) / int(parts[1])
                    if best is None or cores < best[0]:
                        best = (cores, f"cgroup v2 cpu.max {parts[0]} {parts[1]}")
        elif "cpu" in controllers.split(","):  # v1
            for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                for folder in (cgroup_root / mount / rel, cgroup_root / mount):
                    quota = (read_text(folder / "cpu.cfs_quota_us") or "").strip()
                    period = (read_text(folder / "cpu.cfs_period_us") or "").strip()
                    if quota and period and int(quota) > 0 and int(period) > 0:
                        cores = int(quota) / int(period)
                        if best is None or cores < best[0]:
                            best = (cores, f"cgroup v1 cfs quota {quota} / period {period}")
    return best


def available_cores(
    *,
    affinity: set[int] | None = None,
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
    proc_cgroup: str | None = None,
) -> tuple[int, str]:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

    A quota of ``q`` cores allows ``floor(q)`` threads (at least 1): more threads than the quota
    get throttled in turn and wait for each other.

    Args:
        affinity: the allowed CPUs (default ``os.sched_getaffinity(0)``, else ``os.cpu_count()``).
        cgroup_root: where the cgroup file systems are mounted.
        proc_cgroup: the text of ``/proc/self/cgroup`` (default: read it).

    Returns:
        ``(cores, how)``: the count and a one-line explanation.
    """
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
            affinity = set(range(os.cpu_count() or 1))
    cores, how = max(1, len(affinity)), f"affinity {len(affinity)} CPUs"
    if proc_cgroup is None:
        proc_cgroup = read_text(Path("/proc/self/cgroup")) or ""
    quota = _cgroup_quota(Path(cgroup_root), proc_cgroup)
    if quota is not None and math.floor(quota[0]) < cores:
        cores, how = max(1, math.floor(quota[0])), f"{how}, {quota[1]} = {quota[0]:g} cores"
    return cores, how


@dataclass(frozen=True)
class Capabilities:
    """What the machine offers, as read by :func:`detect` (or built by hand in tests).

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        device_name: the GPU or CPU model.
        cpu_flags: the CPU feature flags (``/proc/cpuinfo``).
        cuda_bf16: the GPU runs bf16 natively (``torch.cuda.is_bf16_supported()``, Ampere+).
        cpp_compiler: a C++ compiler is on the PATH (inductor needs one for CPU kernels).
        cores: cores this process may use (:func:`available_cores`).
        cores_how: how ``cores`` was found.
        cpus: the CPU ids of this process's affinity.
        quota: a cgroup CPU quota applies (other processes' load is then invisible).
        proc_stat: ``/proc/stat`` is readable (per-CPU busy times, for :class:`ThreadGovernor`).
        omp_num_threads: ``OMP_NUM_THREADS`` as the user set it (None: unset).
        local_world_size: processes per machine under torchrun (``LOCAL_WORLD_SIZE``).
    """

    device: str = "cpu"
    device_name: str = ""
    cpu_flags: frozenset[str] = frozenset()
    cuda_bf16: bool = False
    cpp_compiler: bool = False
    cores: int = 1
    cores_how: str = ""
    cpus: tuple[int, ...] = ()
    quota: bool = False
    proc_stat: bool = False
    omp_num_threads: int | None = None
    local_world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_flags"] = sorted(f for f in self.cpu_flags if "bf16" in f or "avx" in f)
        return d


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    try:
        value = int(environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def detect(device: Any = "cpu", *, environ: Mapping[str, str] | None = None) -> Capabilities:
    """Reads the capabilities of this machine for a job on ``device``."""
    import torch

    from condattn._io import cpu_name

    env = os.environ if environ is None else environ
    device = torch.device(device)
    cuda = device.type == "cuda"
    cores, how = available_cores()
    try:
        cpus = tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        cpus = tuple(range(os.cpu_count() or 1))
    # OMP_NUM_THREADS counts as the user's only if condattn did not set it.
    user_omp = None if "OMP_NUM_THREADS" in set_by_condattn() else _env_int(env, "OMP_NUM_THREADS")
    return Capabilities(
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if cuda else cpu_name(),
        cpu_flags=cpu_flags(read_text(Path("/proc/cpuinfo")) or ""),
        cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        cpp_compiler=any(shutil.which(c) for c in (env.get("CXX") or "g++", "c++", "clang++")),
        cores=cores,
        cores_how=how,
        cpus=cpus,
        quota="cgroup" in how,
        proc_stat=read_text(Path("/proc/stat")) is not None,
        omp_num_threads=user_omp,
        local_world_size=_env_int(env, "LOCAL_WORLD_SIZE") or 1,
    )


# --- 2. decisions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedPlan:
    """The speed choices of a run (:func:`decide`), each with its reason in ``why``.

    Attributes:
        precision: ``"bf16"`` (autocast to bfloat16 around forward and loss) or ``"fp32"``.
        channels_last: models and batches in ``torch.channels_last`` memory format.
        compile: a ``torch.compile`` mode, or ``"off"``.
        threads: intra-op threads for ``torch.set_num_threads`` (the most, when adapting).
        adapt_threads: a :class:`ThreadGovernor` lowers ``threads`` while other processes keep
            cores busy, and raises it back when they leave.
        why: key -> the reason for the choice.
        capabilities: what it was decided from (:meth:`Capabilities.to_dict`).
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "off"
    threads: int = 1
    adapt_threads: bool = False
    why: dict[str, str] = field(default_factory=dict)
    capabilities: dict[str, Any] = field(default_factory=dict)

    def autocast(self, device_type: str):
        """The autocast context of the plan's precision (disabled for fp32)."""
        import torch

        bf16 = self.precision == "bf16"
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _precision(caps: Capabilities, asked: str) -> tuple[str, str]:
    if asked not in PRECISIONS:
        raise ValueError(f"precision={asked!r} is not valid; choose one of: {PRECISIONS}")
    if asked != "auto":
        return asked, "set in the config"
    if caps.device == "cuda":
        if caps.cuda_bf16:
            return "bf16", "auto: the GPU runs bf16 natively"
        return "fp32", "auto: the GPU has no native bf16"
    native = sorted(set(CPU_BF16_FLAGS) & caps.cpu_flags)
    if native:
        return "bf16", f"auto: the CPU runs bf16 natively ({', '.join(native)})"
    return "fp32", f"auto: the CPU has none of {', '.join(CPU_BF16_FLAGS)}"


def _channels_last(caps: Capabilities, asked: str, precision: str) -> tuple[bool, str]:
    if asked not in CHANNELS_LAST:
        raise ValueError(f"channels_last={asked!r} is not valid; choose one of: {CHANNELS_LAST}")
    if asked != "auto":
        return asked == "on", "set in the config"
    if caps.device == "cuda":
        if precision == "bf16":
            return True, "auto: bf16 convolutions on tensor cores want NHWC"
        return False, "auto: fp32 on this GPU (no bf16), where NHWC does not pay"
    return True, "auto: measured faster on CPU in fp32 and bf16 (docs/results.md, Speed)"


def _compile(caps: Capabilities, asked: str, steps: int | None) -> tuple[str, str]:
    if asked not in COMPILE_MODES:
        raise ValueError(f"compile={asked!r} is not valid; choose one of: {COMPILE_MODES}")
    if asked != "auto":
        return asked, "set in the config"
    if steps is None or steps < COMPILE_MIN_STEPS:
        return "off", f"auto: {steps} train steps < {COMPILE_MIN_STEPS}, too few to pay back"
    if caps.device == "cpu":
        return "off", (
            "auto: on CPU inductor saved about 1% of a bf16 train step (docs/results.md, The "
            "default loop), less than its compile time pays back"
        )
    return "default", (
        f"auto: {steps} train steps >= {COMPILE_MIN_STEPS}; inductor fuses the elementwise work "
        "(the SE gate's pool and scale among it); no CUDA graphs"
    )


def _threads(caps: Capabilities, asked: int) -> tuple[int, str]:
    if asked < 0:
        raise ValueError(f"threads must be >= 0 (0 = auto), got {asked}")
    if asked:
        return asked, "set in the config"
    if caps.omp_num_threads:
        return caps.omp_num_threads, "auto: OMP_NUM_THREADS set by the user"
    per_process = max(1, caps.cores // max(1, caps.local_world_size))
    how = caps.cores_how or f"{caps.cores} cores"
    if caps.local_world_size > 1:
        how += f", shared by {caps.local_world_size} local processes"
    return per_process, f"auto: the cores available ({how})"


def _adapt(caps: Capabilities, system: Any) -> tuple[bool, str]:
    if system.threads or caps.omp_num_threads:
        return False, "no: the thread count is set"
    if caps.device != "cpu":
        return False, "no: on a GPU the CPU threads do not bound the step"
    if getattr(system, "deterministic", False):
        return False, "no: deterministic runs keep one thread count"
    if caps.quota or not caps.proc_stat:
        return False, "no: other processes' load is not visible (cgroup quota or no /proc/stat)"
    return True, "yes: fewer threads while other processes keep cores busy"


def decide(caps: Capabilities, system: Any, *, steps: int | None = None) -> SpeedPlan:
    """The speed choices for a run: a pure function of the capabilities and the config.

    Args:
        caps: the machine (:func:`detect`).
        system: a ``[system]`` config with ``precision``, ``channels_last``, ``compile`` (strings
            from :data:`PRECISIONS`, :data:`CHANNELS_LAST`, :data:`COMPILE_MODES`),
            ``threads`` (0 = auto) and optionally ``deterministic``.
        steps: the run's train steps (epochs x steps per epoch); None: unknown (evaluation).

    Rules for ``"auto"``:

    - precision: bf16 autocast where the hardware runs bf16 natively (a CUDA GPU with bf16
      support; a CPU with AMX or AVX512-BF16), else fp32.
    - channels_last: on for CPUs (measured faster in fp32 and bf16) and for GPUs in bf16.
    - compile: ``"default"`` (inductor, no CUDA graphs) for runs of at least
      :data:`COMPILE_MIN_STEPS` steps (on a CPU only with a C++ compiler), else off.
    - threads: ``OMP_NUM_THREADS`` when the user set it, else the cores this process may use
      (affinity and cgroup quota), divided among the local torchrun processes; on a CPU, unless
      deterministic, adapted while the run goes to the cores others leave free.

    Raises:
        ValueError: a value outside its vocabulary (the message lists the valid ones).
    """
    precision, why_p = _precision(caps, system.precision)
    channels_last, why_c = _channels_last(caps, system.channels_last, precision)
    compile_mode, why_m = _compile(caps, system.compile, steps)
    threads, why_t = _threads(caps, system.threads)
    adapt, why_a = _adapt(caps, system)
    return SpeedPlan(
        precision=precision,
        channels_last=channels_last,
        compile=compile_mode,
        threads=threads,
        adapt_threads=adapt and threads > 1,
        why={
            "precision": why_p,
            "channels_last": why_c,
            "compile": why_m,
            "threads": why_t,
            "adapt_threads": why_a,
        },
        capabilities=caps.to_dict(),
    )
