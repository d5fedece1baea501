"""Assertion helpers whose failure messages say what was being compared.

Every helper takes a keyword-only ``what``: a short phrase naming the call under test, such as
``"CondCbam.from_module(Cbam(32, r=4), cond_dim=5) vs its source, eval mode"``. It heads the
failure message, so a failing hypothesis example explains itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from condattn._io import logging_to

__all__ = [
    "assert_all_params_have_grad",
    "assert_close",
    "assert_in_range",
    "assert_not_close",
    "assert_shape",
    "assert_state_dict_equal",
    "condattn_log",
    "randomize_batchnorm_",
    "state_dict_snapshot",
]


def _fmt_index(flat_index: int, shape: Sequence[int]) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(index))


def assert_shape(actual: Tensor, expected: Sequence[int], *, what: str) -> None:
    """``actual.shape == expected``."""
    if tuple(actual.shape) != tuple(expected):
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected)}")


def assert_close(
    actual: Tensor, expected: Tensor, *, what: str, atol: float = 1e-6, rtol: float = 1e-5
) -> None:
    """Elementwise ``|actual - expected| <= atol + rtol * |expected|`` (NaN never matches).

    The message gives the max abs diff, where it is, both values there and how many elements
    are out of tolerance.
    """
    assert_shape(actual, expected.shape, what=what)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    ok = torch.isclose(a, e, rtol=rtol, atol=atol)
    if bool(ok.all()):
        return
    diff = (a - e).abs().nan_to_num(nan=float("inf"))
    worst = int(diff.argmax())
    idx = _fmt_index(worst, a.shape) if a.dim() else ()
    raise AssertionError(
        f"{what}: not close (atol={atol:g}, rtol={rtol:g}); "
        f"{int((~ok).sum())}/{ok.numel()} elements differ; "
        f"max abs diff {float(diff.flatten()[worst]):.3g} at index {idx}: "
        f"actual {float(a.flatten()[worst]):.8g}, expected {float(e.flatten()[worst]):.8g}"
    )


def assert_not_close(actual: Tensor, other: Tensor, *, what: str, min_abs_diff: float) -> None:
    """The two tensors differ somewhere by more than ``min_abs_diff`` (same shape required)."""
    assert_shape(actual, other.shape, what=what)
    diff = float((actual.detach().double() - other.detach().double()).abs().max())
    if not diff > min_abs_diff:
        raise AssertionError(
            f"{what}: expected the tensors to differ by more than {min_abs_diff:g}, "
            f"but the max abs diff is {diff:.3g}"
        )


def assert_in_range(actual: Tensor, lo: float, hi: float, *, what: str) -> None:
    """Every element is finite and in ``[lo, hi]``."""
    a = actual.detach()
    if not bool(torch.isfinite(a).all()):
        raise AssertionError(f"{what}: {int((~torch.isfinite(a)).sum())} non-finite elements")
    mn, mx = float(a.min()), float(a.max())
    if mn < lo or mx > hi:
        raise AssertionError(f"{what}: values span [{mn:.8g}, {mx:.8g}], outside [{lo}, {hi}]")


def assert_all_params_have_grad(model: nn.Module, *, what: str, allow_zero: bool = False) -> None:
    """Every trainable parameter has a finite ``.grad``, non-zero unless ``allow_zero``.

    ``allow_zero=True`` is for randomly drawn configs, where a ReLU unit may be dead for every
    sample and its weights then rightly get an all-zero gradient.
    """
    missing, zero, nonfinite = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
        elif not bool(torch.isfinite(p.grad).all()):
            nonfinite.append(name)
        elif not allow_zero and not bool(p.grad.any()):
            zero.append(name)
    problems = []
    if missing:
        problems.append(f"no grad (None): {missing}")
    if nonfinite:
        problems.append(f"non-finite grad: {nonfinite}")
    if zero:
        problems.append(f"all-zero grad: {zero}")
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems))


def state_dict_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model.state_dict()`` (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_dict_equal(
    before: Mapping[str, Tensor], after: Mapping[str, Tensor], *, what: str = "state_dict"
) -> None:
    """Same keys, and every value has the same shape, dtype and exact contents."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = [
        k
        for k in before
        if k in after
        and (
            before[k].shape != after[k].shape
            or before[k].dtype != after[k].dtype
            or not torch.equal(before[k], after[k])
        )
    ]
    problems = []
    if added:
        problems.append(f"keys added: {added}")
    if removed:
        problems.append(f"keys removed: {removed}")
    if changed:
        problems.append(f"values changed: {changed}")
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems))


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running stats and affine parameters (in place).

    Fresh BNs have mean 0, var 1, weight 1, bias 0, which hides a copy that forgot them.
    Uses the global torch RNG, so seed first.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    return model


# The files every finished run folder holds (condattn.train.loop).
RUN_FILES = frozenset(
    {
        "config.json",
        "config.toml",
        "environment.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "curves.png",
        "results.json",
        ".lock",  # the one trainer's flock (condattn.train.lock)
    }
    # TensorBoard event files (condattn.train.tensorboard), where the package is installed
    | ({"tensorboard"} if importlib.util.find_spec("tensorboard") else set())
)


@contextlib.contextmanager
def condattn_log(on_line: Callable[[str], None]) -> Iterator[None]:
    """Calls ``on_line(message)`` for every INFO+ line of the ``condattn`` loggers in the block
    (what the command shows on the console); ``on_line`` may raise, to stop the library there."""

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            on_line(record.getMessage())  # an exception propagates: no handleError here

    with logging_to(_Handler()):
        yield


#: A tiny, deterministic grid run (synthetic data, one thread) for the launcher and SLURM tests.
TINY_GRID = [
    "model.widths=[8,16,16,32]",
    "data.synthetic_train=256",
    "data.synthetic_test=64",
    "optim.batch_size=64",
    "optim.milestones=[]",
    "system.threads=1",
    "system.deterministic=true",
]


def set_args(items: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]`` (a command's overrides)."""
    return [a for item in items for a in ("--set", item)]
