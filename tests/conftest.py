"""Shared pytest setup: hypothesis profiles and a fixed torch seed.

Pick a hypothesis profile with the ``HYPOTHESIS_PROFILE`` environment variable:

- ``default`` / ``ci``: 15 examples, derandomized, so every run tests the same examples;
- ``dev``: 5 examples, for a fast edit-test loop;
- ``thorough``: 200 random examples, to hunt for new counterexamples.

``deadline=None`` everywhere: the first call into torch (and any full model) is slow in ways that
say nothing about the code under test.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

# derandomize=True: CI sees the same examples on every run; no example database is written then.
settings.register_profile("default", max_examples=15, derandomize=True, database=None, **_COMMON)
settings.register_profile("ci", max_examples=15, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=5, **_COMMON)
settings.register_profile("thorough", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _torch_seed() -> None:
    """Every test starts from the same torch RNG state, whatever ran before it.

    Hypothesis tests should still seed inside the test body from a drawn seed (see
    ``strategies.seeds``), so that each example replays the same tensors when shrinking.
    """
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for the whole suite: the tests use tiny models, which gain nothing
    from a second thread, and two OpenMP threads on shared, busy cores spin-wait and run small
    convs many times slower than one. ``OMP_NUM_THREADS=1`` makes ``train()``'s thread choice
    (``system.threads = 0``: condattn.train.speed.decide) one thread too, in this process and in
    subprocesses (torchrun, CLI) that do not set their own."""
    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp
