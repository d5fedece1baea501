"""The GPU path, checked on the CPU: device-resident data and augmentation, no host syncs in a
train step, bf16 + channels_last, and the compile path.

A GPU step must never wait for the GPU: no ``.item()``, ``bool(tensor)`` or ``.cpu()`` of a device
tensor, and no blocking host-to-device copy. On the CPU there is no such device, so the ``meta``
device stands in for it: every tensor op runs (shapes only), any read of a value fails, and
:class:`SyncGuard` flags the blocking copies. On a machine with a GPU, the last test runs the
real loop under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from condattn.data import BatchAugment, TensorLoader, synthetic_cifar100
from condattn.train.build import as_output, build_loss, build_model, build_optimizer
from condattn.train.metrics import MetricSums
from condattn.train.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
DEVICE = torch.device("meta")  # stands in for a GPU: values cannot be read back
# Tensor methods that read a value on the host (a sync on a GPU).
_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu"}


class HostSync(AssertionError):
    """A host sync in code that must not have one."""


class SyncGuard(TorchFunctionMode):
    """Raises :class:`HostSync` on reads of ``device`` tensors and on blocking copies to it."""

    def __init__(self, device: torch.device = DEVICE) -> None:
        super().__init__()
        self.device = device

    def _on(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and t.device.type == self.device.type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        problem = self._problem(getattr(func, "__name__", ""), args, kwargs)
        if problem:
            raise HostSync(problem)
        return func(*args, **kwargs)

    def _problem(self, name: str, args: tuple, kwargs: dict) -> str | None:
        if name in _READS and args and self._on(args[0]):
            return f"{name}() of a {self.device.type} tensor"
        if name == "to" and args and isinstance(args[0], torch.Tensor):
            device, _dtype, non_blocking, _fmt = torch._C._nn._parse_to(*args[1:], **kwargs)
            if args[0].device.type == "cpu" and self._on_type(device) and not non_blocking:
                return f"blocking copy to {device} of {tuple(args[0].shape)}"
        if name == "copy_" and self._on(args[0]) and args[1].device.type == "cpu":
            non_blocking = kwargs.get("non_blocking") or (len(args) > 2 and args[2])
            if not non_blocking:
                return f"blocking copy_ to {args[0].device}"
        if name in ("tensor", "as_tensor") and self._on_type(kwargs.get("device")):
            return f"torch.{name}(..., device={kwargs['device']}) copies host data"
        return None

    def _on_type(self, device: object) -> bool:
        return device is not None and torch.device(device).type == self.device.type


@pytest.fixture(scope="module")
def data():
    return synthetic_cifar100(n_train=96, n_test=40, seed=0)


def _cfg(*sets: str):
    sets = ("model.widths=[8, 8, 16, 16]", "model.aux_dropout=0.5", *sets)
    return load_recipe(str(REPO / "recipes" / "quick.toml"), list(sets))


# --- the guard itself --------------------------------------------------------------------------


def test_guard_catches_reads_and_blocking_copies():
    x = torch.zeros(4, device=DEVICE)
    host = torch.zeros(4)
    with SyncGuard():
        with pytest.raises(HostSync):
            x.sum().item()
        with pytest.raises(HostSync):
            bool(x.any())
        with pytest.raises(HostSync):
            host.to(DEVICE)
        with pytest.raises(HostSync):
            torch.tensor(3, device=DEVICE)  # what MetricSums.add used to do every step
        with pytest.raises(HostSync):
            x.copy_(host)
        host.to(DEVICE, non_blocking=True)  # allowed
        torch.full((), 3, device=DEVICE)  # allowed: a fill, no host data
        host.sum().item()  # allowed: host tensors


# --- data on the device ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "augment",
    [
        BatchAugment(channels_last=True),  # rotation: one grid_sample per batch
        BatchAugment(rotate=False),  # crop + flip as integer gathers
        BatchAugment.eval_transform(channels_last=True),
    ],
    ids=["rotate", "shift_flip", "eval"],
)
def test_loader_keeps_data_on_the_device_and_batches_without_syncs(data, augment):
    loader = TensorLoader(
        data.train_images, data.train_labels, batch_size=32, augment=augment, device=DEVICE
    )
    assert loader.images.device == DEVICE and loader.images.dtype == torch.uint8
    batches = loader.epoch(0)
    next(batches)  # the epoch's one upload of its order, and the augmenter's constants
    with SyncGuard():
        rest = list(batches)
    assert len(rest) == len(loader) - 1
    x, y = rest[-1]
    assert x.device == DEVICE and y.device == DEVICE and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last) == augment.channels_last


# --- the train step ----------------------------------------------------------------------------


def _step_objects(cfg, data, device):
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=data.num_classes).to(device)
    model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(cfg, model), build_loss(cfg)


def test_bf16_channels_last_train_step_and_metrics_have_no_host_sync(data):
    cfg = _cfg()
    model, opt, crit = _step_objects(cfg, data, DEVICE)
    loader = TensorLoader(
        data.train_images,
        data.train_labels,
        batch_size=32,
        augment=BatchAugment(channels_last=True),
        device=DEVICE,
    )
    sums = MetricSums(num_aux=len(cfg.loss.aux_weights), device=DEVICE)
    batches = loader.epoch(0)
    next(batches)
    with SyncGuard():
        for x, y in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = as_output(model(x))
                parts = crit(out, y)
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            opt.step()
            sums.add(logits=out.logits, target=y, loss=parts.total, main=parts.main, aux=parts.aux)
    assert sums.sums.device == DEVICE


def test_metric_sums_accumulate_on_device_and_match_a_direct_count(data):
    sums = MetricSums(num_aux=1)
    logits = torch.randn(10, 5)
    target = torch.randint(0, 5, (10,))
    loss, aux = torch.tensor(2.0), torch.tensor(3.0)
    for _ in range(3):
        sums.add(logits=logits, target=target, loss=loss, main=loss, aux=(aux,))
    m = sums.means()
    assert m["n"] == 30 and m["loss"] == pytest.approx(2.0) and m["aux_losses"] == [3.0]
    assert m["top1"] == pytest.approx(100.0 * (logits.argmax(1) == target).float().mean().item())


# --- compile -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", pytest.param("aot_eager", marks=pytest.mark.slow)])
def test_compiled_train_step_matches_eager(data, backend):
    """The model compiles (dynamo's graph capture; with aot_eager also AOT autograd's joint
    graph, as inductor uses) and computes the same loss and gradients as eager."""
    cfg = _cfg("model.aux_dropout=0.0")
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 100, (8,))
    grads = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model, _opt, crit = _step_objects(cfg, data, torch.device("cpu"))
        net = torch.compile(model, backend=backend) if compiled else model
        loss = crit(as_output(net(x)), y).total
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_steps_have_no_host_sync(data):
    """On a GPU: device-resident data, bf16 + channels_last steps under sync debug mode."""
    device = torch.device("cuda")
    cfg = _cfg()
    model, opt, crit = _step_objects(cfg, data, device)
    loader = TensorLoader(
        data.train_images,
        data.train_labels,
        batch_size=32,
        augment=BatchAugment(channels_last=True),
        device=device,
    )
    sums = MetricSums(num_aux=len(cfg.loss.aux_weights), device=device)
    batches = loader.epoch(0)
    next(batches)  # the epoch's one upload of its order
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = as_output(model(x))
                parts = crit(out, y)
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            opt.step()
            sums.add(logits=out.logits, target=y, loss=parts.total, main=parts.main, aux=parts.aux)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert sums.means()["n"] == 64
