"""Start-up speed choices: capabilities parsing and the pure decision function
(condattn.train.speed), the OpenMP environment (condattn._omp_env), the thread governor
(condattn.train.governor)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from condattn import _omp_env
from condattn.train import governor as gov
from condattn.train import speed
from condattn.train.speed import Capabilities, available_cores, cpu_flags, decide

REPO = Path(__file__).resolve().parents[1]

CPUINFO_AMX = """processor : 0
vendor_id : GenuineIntel
model name : Intel(R) Xeon(R) Platinum 8480+
flags : fpu vme sse sse2 avx avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8
"""
CPUINFO_ZEN4 = "model name : AMD EPYC 9654\nflags : fpu sse2 avx2 avx512f avx512_bf16 avx512vl\n"
CPUINFO_AVX2 = "model name : Intel(R) Core(TM) i7-8700\nflags : fpu sse2 avx avx2 fma\n"
CPUINFO_ARM = "processor : 0\nFeatures : fp asimd evtstrm aes sha1 bf16\n"


@dataclass(frozen=True)
class System:
    """The [system] keys decide() reads, defaulting to condattn's defaults."""

    precision: str = "auto"
    channels_last: str = "auto"
    compile: str = "auto"
    threads: int = 0
    deterministic: bool = False


def cpu(info: str, cores: int = 2, **kw) -> Capabilities:
    return Capabilities(device="cpu", cpu_flags=cpu_flags(info), cores=cores, **kw)


# --- precision ---------------------------------------------------------------------------------


def test_cpuinfo_flags_are_parsed_for_x86_and_arm():
    assert {"amx_bf16", "avx512f"} <= cpu_flags(CPUINFO_AMX)
    assert "avx512_bf16" in cpu_flags(CPUINFO_ZEN4)
    assert "bf16" in cpu_flags(CPUINFO_ARM)
    assert cpu_flags("no flags here") == frozenset()


@pytest.mark.parametrize("info", [CPUINFO_AMX, CPUINFO_ZEN4])
def test_auto_precision_is_bf16_on_cpus_with_native_bf16(info):
    plan = decide(cpu(info), System())
    assert plan.precision == "bf16"
    assert "natively" in plan.why["precision"]


@pytest.mark.parametrize("info", [CPUINFO_AVX2, CPUINFO_ARM, ""])
def test_auto_precision_is_fp32_without_amx_or_avx512_bf16(info):
    assert decide(cpu(info), System()).precision == "fp32"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cuda_follows_bf16_support(bf16, expected):
    caps = Capabilities(device="cuda", cuda_bf16=bf16, cores=16)
    assert decide(caps, System()).precision == expected


def test_explicit_precision_overrides_the_hardware():
    assert decide(cpu(CPUINFO_AMX), System(precision="fp32")).precision == "fp32"
    plan = decide(cpu(CPUINFO_AVX2), System(precision="bf16"))
    assert plan.precision == "bf16" and plan.why["precision"] == "set in the config"


def test_bad_values_name_the_valid_choices():
    with pytest.raises(ValueError, match="fp32"):
        decide(cpu(""), System(precision="fp16"))
    with pytest.raises(ValueError, match="max-autotune"):
        decide(cpu(""), System(compile="fast"))
    with pytest.raises(ValueError, match="auto"):
        decide(cpu(""), System(channels_last="yes"))
    with pytest.raises(ValueError, match=">= 0"):
        decide(cpu(""), System(threads=-1))


# --- memory format and compile -----------------------------------------------------------------


def test_channels_last_auto_and_override():
    assert decide(cpu(CPUINFO_AVX2), System()).channels_last is True
    assert decide(Capabilities(device="cuda", cuda_bf16=True), System()).channels_last is True
    assert decide(Capabilities(device="cuda", cuda_bf16=False), System()).channels_last is False
    assert decide(cpu(CPUINFO_AMX), System(channels_last="off")).channels_last is False
    assert decide(Capabilities(device="cuda"), System(channels_last="on")).channels_last is True


def test_compile_auto_only_for_long_runs_on_a_gpu():
    long, short = speed.COMPILE_MIN_STEPS, speed.COMPILE_MIN_STEPS - 1
    gpu = Capabilities(device="cuda", cuda_bf16=True)
    assert decide(gpu, System(), steps=long).compile == "default"
    assert decide(gpu, System(), steps=short).compile == "off"
    assert decide(gpu, System()).compile == "off"  # unknown length (evaluation)
    plan = decide(cpu(CPUINFO_AMX, cpp_compiler=True), System(), steps=long)
    assert plan.compile == "off" and "CPU" in plan.why["compile"]  # measured: it does not pay
    assert decide(cpu(CPUINFO_AMX), System(compile="default"), steps=long).compile == "default"
    assert decide(cpu(""), System(compile="max-autotune")).compile == "max-autotune"


# --- threads -----------------------------------------------------------------------------------


def test_threads_default_to_the_available_cores():
    plan = decide(cpu("", cores=6, cores_how="affinity 6 CPUs"), System())
    assert plan.threads == 6
    assert "affinity 6 CPUs" in plan.why["threads"]


def test_threads_respect_the_config_then_omp_num_threads():
    caps = cpu("", cores=8, omp_num_threads=3)
    assert decide(caps, System()).threads == 3
    assert decide(caps, System(threads=5)).threads == 5


def test_threads_are_split_among_local_torchrun_processes():
    assert decide(cpu("", cores=8, local_world_size=4), System()).threads == 2
    assert decide(cpu("", cores=2, local_world_size=4), System()).threads == 1


def test_available_cores_from_affinity_of_one_core(tmp_path):
    assert available_cores(affinity={3}, cgroup_root=tmp_path, proc_cgroup="0::/")[0] == 1


def _cgroup_v2(root: Path, rel: str, cpu_max: str) -> None:
    folder = root / rel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(cpu_max + "\n")


def test_cgroup_v2_quota_caps_the_cores(tmp_path):
    _cgroup_v2(tmp_path, "job", "50000 100000")
    n, how = available_cores(affinity={0, 1, 2, 3}, cgroup_root=tmp_path, proc_cgroup="0::/job")
    assert n == 1 and "50000 100000" in how
    _cgroup_v2(tmp_path, "big", "250000 100000")
    n, _ = available_cores(affinity=set(range(8)), cgroup_root=tmp_path, proc_cgroup="0::/big")
    assert n == 2


def test_cgroup_v2_unlimited_and_nested_limits(tmp_path):
    _cgroup_v2(tmp_path, "a", "max 100000")
    assert available_cores(affinity={0, 1}, cgroup_root=tmp_path, proc_cgroup="0::/a")[0] == 2
    _cgroup_v2(tmp_path, "p", "100000 100000")  # the parent's limit binds the child
    _cgroup_v2(tmp_path, "p/c", "max 100000")
    assert available_cores(affinity={0, 1, 2}, cgroup_root=tmp_path, proc_cgroup="0::/p/c")[0] == 1


def test_cgroup_v1_cfs_quota(tmp_path):
    folder = tmp_path / "cpu,cpuacct" / "docker" / "x"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("150000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    text = "4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n"
    assert available_cores(affinity=set(range(4)), cgroup_root=tmp_path, proc_cgroup=text)[0] == 1
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert available_cores(affinity=set(range(4)), cgroup_root=tmp_path, proc_cgroup=text)[0] == 4


def test_available_cores_on_this_machine_is_positive():
    n, how = available_cores()
    assert n >= 1 and how


# --- OpenMP environment ------------------------------------------------------------------------


def test_thread_env_sets_a_short_spin_unless_the_user_set_it():
    env: dict[str, str] = {}
    assert _omp_env.apply_thread_env(env) == {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}
    env = {"KMP_BLOCKTIME": ""}  # the user's value, even empty, stays
    assert _omp_env.apply_thread_env(env) == {"GOMP_SPINCOUNT": "10000"}
    assert env["KMP_BLOCKTIME"] == ""
    env = {"OMP_WAIT_POLICY": "PASSIVE"}  # a spin count would override the user's policy
    assert _omp_env.apply_thread_env(env) == {}
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_cli_process_detection():
    assert _omp_env.is_cli_process(
        ["/venv/bin/condattn", "train"], ["python", "/venv/bin/condattn"]
    )
    assert _omp_env.is_cli_process(["-m"], ["python", "-u", "-m", "condattn.cli", "train"])
    assert not _omp_env.is_cli_process(["script.py"], ["python", "script.py"])
    assert not _omp_env.is_cli_process(["-m"], ["python", "-m", "pytest"])
    assert not _omp_env.is_cli_process([], ["python", "-m"])


def _child(script: Path, env_extra: dict[str, str] | None = None) -> str:
    """Runs ``script`` in a fresh interpreter with a clean environment; its stdout."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **(env_extra or {})}
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return out.stdout.strip()


def test_cli_sets_the_env_before_torch_loads_and_keeps_the_users(tmp_path):
    probe = tmp_path / "probe.py"
    # Pose as `python -m condattn.cli`, import condattn as the command does, then report.
    probe.write_text(
        "import os, sys\n"
        "sys.orig_argv = [sys.executable, '-m', 'condattn.cli']\n"
        "import condattn\n"
        "from condattn import _omp_env\n"
        "rec = _omp_env.thread_env_record()\n"
        "print(os.environ['GOMP_SPINCOUNT'], os.environ['KMP_BLOCKTIME'], "
        "sorted(rec['set_by_condattn']), rec['torch_loaded_before'])\n"
    )
    out = _child(probe, {"KMP_BLOCKTIME": "5"})
    assert out == "10000 5 ['GOMP_SPINCOUNT'] False"


@pytest.mark.slow
def test_importing_condattn_as_a_library_leaves_the_env_alone(tmp_path):
    probe = tmp_path / "lib.py"
    probe.write_text("import os, condattn\nprint(os.environ.get('GOMP_SPINCOUNT'))\n")
    assert _child(probe) == "None"


def test_plan_records_and_autocast():
    import torch

    plan = decide(cpu(CPUINFO_ZEN4), System())
    d = plan.to_dict()
    assert d["precision"] == "bf16" and set(d["why"]) == {
        "precision",
        "channels_last",
        "compile",
        "threads",
        "adapt_threads",
    }
    with plan.autocast("cpu"):
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype == torch.bfloat16
    with decide(cpu(""), System(precision="fp32")).autocast("cpu"):
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype == torch.float32
    assert "avx512_bf16" in cpu(CPUINFO_ZEN4).to_dict()["cpu_flags"]


# --- threads on a shared machine ---------------------------------------------------------------


def test_adaptive_threads_only_when_auto_on_a_cpu_and_not_deterministic():
    caps = cpu("", cores=4, proc_stat=True)
    assert decide(caps, System()).adapt_threads
    assert not decide(caps, System(threads=4)).adapt_threads
    assert not decide(caps, System(deterministic=True)).adapt_threads
    assert not decide(cpu("", cores=4, proc_stat=True, omp_num_threads=2), System()).adapt_threads
    assert not decide(cpu("", cores=4, proc_stat=True, quota=True), System()).adapt_threads
    assert not decide(cpu("", cores=1, proc_stat=True), System()).adapt_threads  # one thread
    gpu = Capabilities(device="cuda", cores=4, proc_stat=True)
    assert not decide(gpu, System()).adapt_threads


@pytest.mark.parametrize(
    ("others", "expected"), [(0.0, 4), (0.2, 4), (0.3, 3), (1.0, 3), (1.3, 2), (3.9, 1), (9.0, 1)]
)
def test_threads_for_free_cores(others, expected):
    assert gov.threads_for_free_cores(others, cores=4, limit=4) == expected
    assert gov.threads_for_free_cores(others, cores=4, limit=2) == min(2, expected)


class FakeMachine:
    """/proc/stat, this process's CPU time and a clock, advanced by hand."""

    def __init__(self, cpus: int = 2) -> None:
        self.cpus, self.now, self.busy, self.ours = cpus, 0.0, [0.0] * cpus, 0.0
        self.set_to: list[int] = []

    def stat(self) -> str:
        tick = gov.os.sysconf("SC_CLK_TCK")
        lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
        for i, b in enumerate(self.busy):
            lines.append(f"cpu{i} {round(b * tick)} 0 0 1000 0 0 0 0 0 0")
        return "\n".join(lines)

    def run(self, seconds: float, *, ours: float, others: float) -> None:
        """``seconds`` pass with this process using ``ours`` cores and others ``others``."""
        self.now += seconds
        self.ours += ours * seconds
        for i in range(self.cpus):
            self.busy[i] += (ours + others) * seconds / self.cpus

    def governor(self, limit: int = 2) -> gov.ThreadGovernor:
        return gov.ThreadGovernor(
            limit,
            cpus=range(self.cpus),
            every_s=2.0,
            read_stat=self.stat,
            cpu_time=lambda: self.ours,
            clock=lambda: self.now,
            set_threads=self.set_to.append,
        )


def test_governor_drops_a_thread_for_a_busy_process_and_takes_it_back():
    m = FakeMachine()
    g = m.governor()
    m.run(3.0, ours=0.5, others=1.5)  # start-up work (data loading, other jobs): not measured
    assert g.poll() is None  # the first poll starts the clock
    m.run(2.5, ours=2.0, others=0.0)
    assert g.poll() is None and g.threads == 2  # quiet
    m.run(2.5, ours=1.3, others=0.7)  # a busy loop starts: one poll is not enough
    assert g.poll() is None
    m.run(2.5, ours=1.3, others=0.7)
    assert g.poll() == 1 and m.set_to == [1]
    m.run(2.5, ours=1.0, others=1.0)
    assert g.poll() is None and g.threads == 1  # still busy: stays
    m.run(2.5, ours=1.0, others=0.0)  # it left
    assert g.poll() is None
    m.run(2.5, ours=1.0, others=0.0)
    assert g.poll() == 2 and m.set_to == [1, 2]
    assert [c["threads"] for c in g.changes] == [1, 2]


def test_governor_ignores_short_intervals_and_idle_gaps():
    m = FakeMachine()
    g = m.governor()
    assert g.poll() is None
    m.run(1.0, ours=1.0, others=1.0)
    assert g.poll() is None  # under every_s: not measured yet
    m.run(60.0, ours=0.0, others=2.0)  # this process idle (e.g. another job ran): no verdict
    assert g.poll() is None
    m.run(2.5, ours=2.0, others=0.0)
    assert g.poll() is None and m.set_to == []


def test_governor_verdict_survives_idle_gaps_between_short_bursts():
    """Stepping in bursts (a benchmark's rounds, epochs between evaluations): a measurement per
    burst, and two agreeing ones in a row decide, across the gaps."""
    m = FakeMachine()
    g = m.governor()
    decided = []
    for _burst in range(3):
        m.run(30.0, ours=0.0, others=2.0)  # idle while something else runs
        assert g.poll() is None  # the gap: a fresh window
        m.run(2.5, ours=1.3, others=0.7)  # stepping beside a busy process
        decided.append(g.poll())
    assert decided == [None, 1, None] and g.threads == 1


def test_governor_ignores_windows_it_mostly_waited_through():
    """Short bursts taking turns with other jobs (a benchmark's interleaved workers): a window
    that holds a wait is not measured, even when shorter than the idle-gap limit."""
    m = FakeMachine()
    g = m.governor()
    assert g.poll() is None
    for _turn in range(6):
        for _step in range(16):  # its own burst, quiet, a poll after every step
            m.run(0.1, ours=2.0, others=0.0)
            assert g.poll() is None
        m.run(3.2, ours=0.0, others=2.0)  # the other jobs' turns
    assert g.threads == 2 and m.set_to == []
    for _step in range(60):  # but a busy process beside its steps is still seen
        m.run(0.1, ours=1.2, others=0.8)
        g.poll()
    assert g.threads == 1 and m.set_to == [1]
