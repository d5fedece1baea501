"""Shared helpers of the benchmark scripts: conditions, interleaved timing, result files.

Every script states the conditions it ran under (:func:`conditions`), warms up, reports medians
(and the interquartile range) and writes ``<out>/<name>_<device>.json`` and ``.md`` with
:func:`write_results`. The library never imports this module.

On shared machines timings drift with other people's load, so compare variants measured
*interleaved* (:func:`interleaved`: round-robin over the variants, rotating who goes first)
in the same run, and report ratios of medians rather than absolute numbers.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
_REPO = Path(__file__).resolve().parents[1]

if str(_REPO) not in sys.path:  # `python benchmarks/x.py` from anywhere imports this checkout
    sys.path.insert(0, str(_REPO))

from condattn._io import cpu_name, provenance  # noqa: E402  (after the sys.path line above)

# --- device and conditions ------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """A human name: the CUDA device name, or the CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def device_slug(device: torch.device) -> str:
    """``cpu``, or the CUDA device name as a file-name slug (``nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def conditions(device: torch.device, **extra: Any) -> dict[str, Any]:
    """What a result depends on: :func:`condattn._io.provenance` (device, torch, threads, host,
    git SHA, time), the load average, plus ``extra``."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without getloadavg
        load = None
    return provenance(device, loadavg_1_5_15=load, **extra)


def conditions_line(c: Mapping[str, Any]) -> str:
    """One markdown line with the conditions (for the top of a results file)."""
    skip = {"device", "device_name", "torch", "threads", "time", "git_sha", "hostname"}
    skip |= {"platform", "cuda"}  # kept in the JSON; too long (or empty on CPU) for the line
    rest = ", ".join(f"{k}={v}" for k, v in c.items() if k not in skip)
    return (
        f"{c['device_name']} ({c['device']}), torch {c['torch']}, {c['threads']} threads, "
        f"host {c['hostname']}, git {c['git_sha']}, {c['time']}" + (f"; {rest}" if rest else "")
    )


# --- timing ---------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, synchronising CUDA around it."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and IQR of a list of seconds."""
    xs = sorted(times)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median_s": statistics.median(xs),
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "min_s": xs[0],
        "n": len(xs),
    }


def timed(
    fn: Callable[[], Any], *, device: torch.device, warmup: int = 1, repeats: int = 5
) -> dict[str, Any]:
    """Warm up, then time ``repeats`` calls; the summary plus the raw times."""
    for _ in range(warmup):
        fn()
    times = [time_call(fn, device) for _ in range(repeats)]
    return {**summarize(times), "times_s": times}


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    device: torch.device,
    warmup: int = 1,
    repeats: int = 5,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time several variants round-robin, so that load drift hits them alike.

    Each variant is warmed up ``warmup`` times (in turn), then each round times every variant
    once; the starting variant rotates from round to round.

    Returns:
        name -> :func:`summarize` plus ``times_s`` (in measurement order).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(time_call(fns[name], device))
        if log is not None:
            log(
                f"  round {r + 1}/{repeats}: "
                + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names)
            )
    return {n: {**summarize(t), "times_s": t} for n, t in times.items()}


# --- peak memory ----------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory(device: torch.device) -> int | None:
    """Start a peak-memory window; returns the baseline in bytes (None when unknown).

    CUDA: ``torch.cuda.reset_peak_memory_stats`` and the allocated bytes now.
    CPU: resets the process's peak RSS (``VmHWM``) by writing ``5`` to ``/proc/self/clear_refs``
    (Linux) and returns the current RSS. tracemalloc would not see torch's allocations.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    rss = _proc_status_kb("VmRSS")
    return None if rss is None else rss * 1024


def peak_memory(device: torch.device, baseline: int | None) -> dict[str, Any]:
    """Peak since :func:`reset_peak_memory`: bytes above ``baseline`` and what was measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "kind": "torch.cuda.max_memory_allocated - allocated before",
            "peak_bytes": peak,
            "delta_bytes": peak - (baseline or 0),
        }
    hwm = _proc_status_kb("VmHWM")
    if hwm is None or baseline is None:
        return {
            "kind": "unavailable (no /proc/self/status)",
            "peak_bytes": None,
            "delta_bytes": None,
        }
    return {
        "kind": "process peak RSS (VmHWM after clear_refs) - RSS before; includes allocator slack",
        "peak_bytes": hwm * 1024,
        "delta_bytes": hwm * 1024 - baseline,
    }


# --- output ---------------------------------------------------------------------------------


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` is one char per column (``l``/``r``), default left for the
    first column and right for the rest."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(map(str, headers)) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Size):
        return list(o)
    if isinstance(o, (torch.device, torch.dtype, Path)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_results(
    name: str,
    device: torch.device,
    payload: Mapping[str, Any],
    markdown: str,
    *,
    out: str | os.PathLike | None = None,
    command: str | None = None,
) -> tuple[Path, Path]:
    """Write ``<out>/<name>_<device>.json`` and ``.md``; returns both paths.

    The markdown gets a header with the command that produced it.
    """
    out_dir = Path(out) if out is not None else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{device_slug(device)}"
    command = command or "python " + " ".join(
        [os.path.relpath(sys.argv[0], _REPO) if sys.argv[0] else name, *sys.argv[1:]]
    )
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(
        json.dumps({"command": command, **payload}, indent=2, default=_jsonable) + "\n"
    )
    md_path.write_text(f"# {name} ({device_slug(device)})\n\nCommand: `{command}`\n\n{markdown}\n")
    return json_path, md_path


def add_common_args(p, *, repeats: int = 5, warmup: int = 1) -> None:
    """``--device``, ``--threads``, ``--repeats``, ``--warmup``, ``--out``, ``--smoke``."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: as is)"
    )
    p.add_argument("--repeats", type=int, default=repeats, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed warm-up calls per variant")
    p.add_argument("--out", default=None, help=f"results folder (default: {RESULTS})")
    p.add_argument("--smoke", action="store_true", help="tiny config that runs in seconds (tests)")


def setup_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def paired_ratio(res: Mapping[str, Mapping[str, Any]], num: str, den: str) -> float:
    """Median over rounds of ``time[num] / time[den]`` measured in the same round.

    With :func:`interleaved`, both steps of a round ran seconds apart, so their ratio cancels
    the slow drift of a shared machine's load that a ratio of overall medians does not.
    """
    pairs = [a / b for a, b in zip(res[num]["times_s"], res[den]["times_s"])]
    return statistics.median(pairs)
