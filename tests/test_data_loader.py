"""Tests for the in-memory loader: coverage, reproducibility, resuming and rank slicing."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from condattn.data import BatchAugment, TensorLoader, synthetic_cifar100

# Example counts come from the hypothesis profile (tests/conftest.py, HYPOTHESIS_PROFILE).
SETTINGS = settings(deadline=None)


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first pixel encodes the index, and labels that are the index."""
    images = torch.randint(
        0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(n)
    )
    return images, torch.arange(n)


def _loader(n: int, **kwargs) -> TensorLoader:
    images, labels = _data(n)
    opts = {"batch_size": 8, "shuffle": True, "seed": 0} | kwargs
    return TensorLoader(images, labels, **opts)


@SETTINGS
@given(n=st.integers(1, 60), batch=st.integers(1, 16), drop_last=st.booleans())
def test_len_and_every_sample_once(n: int, batch: int, drop_last: bool) -> None:
    if drop_last and n < batch:
        with pytest.raises(ValueError, match="no batches"):
            _loader(n, batch_size=batch, drop_last=True)
        return
    loader = _loader(n, batch_size=batch, drop_last=drop_last)
    expected = n // batch if drop_last else math.ceil(n / batch)
    assert len(loader) == expected
    batches = list(loader.epoch(1))
    assert len(batches) == expected
    seen = torch.cat([y for _, y in batches])
    if drop_last:
        assert seen.numel() == expected * batch and seen.unique().numel() == seen.numel()
    else:
        assert torch.equal(seen.sort().values, torch.arange(n))
    images, _ = _data(n)
    for x, y in batches:  # images travel with their labels
        assert torch.equal(x, images[y])


def test_order_depends_only_on_seed_and_epoch() -> None:
    a, b = _loader(50), _loader(50)
    for _ in a.epoch(0):  # consuming other epochs first must not matter
        pass
    ya = torch.cat([y for _, y in a.epoch(3)])
    yb = torch.cat([y for _, y in b.epoch(3)])
    assert torch.equal(ya, yb)
    assert not torch.equal(ya, torch.cat([y for _, y in b.epoch(4)]))
    assert not torch.equal(ya, torch.cat([y for _, y in _loader(50, seed=1).epoch(3)]))
    plain = torch.cat([y for _, y in _loader(50, shuffle=False).epoch(3)])
    assert torch.equal(plain, torch.arange(50))


def test_augmentation_depends_only_on_seed_and_epoch() -> None:
    make = lambda seed: _loader(40, augment=BatchAugment(), seed=seed)  # noqa: E731
    first = [x for x, _ in make(0).epoch(2)]
    again = [x for x, _ in make(0).epoch(2)]
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    other = [x for x, _ in make(0).epoch(5)]
    assert not torch.equal(first[0], other[0])


@SETTINGS
@given(start=st.integers(0, 7))
def test_start_step_resumes_exactly(start: int) -> None:
    loader = _loader(50, augment=BatchAugment(), batch_size=7)
    full = list(loader.epoch(4))
    resumed = list(loader.epoch(4, start_step=start))
    assert len(resumed) == len(full) - start
    for (x1, y1), (x2, y2) in zip(full[start:], resumed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@SETTINGS
@given(
    n=st.integers(1, 50),
    per_rank=st.integers(1, 5),
    world=st.sampled_from([2, 3, 4]),
    drop_last=st.booleans(),
    augment=st.booleans(),
)
def test_rank_slices_concatenate_to_the_single_process_batch(
    n: int, per_rank: int, world: int, drop_last: bool, augment: bool
) -> None:
    batch = per_rank * world
    if drop_last and n < batch:
        return
    common = {"batch_size": batch, "drop_last": drop_last, "seed": 7}
    if augment:
        common["augment"] = BatchAugment()
    single = list(_loader(n, **common).epoch(1))
    ranks = [list(_loader(n, rank=r, world_size=world, **common).epoch(1)) for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)  # same number of steps on every rank
    for step, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([r[step][0] for r in ranks]), x)
        assert torch.equal(torch.cat([r[step][1] for r in ranks]), y)
        if x.shape[0] == batch:
            assert all(r[step][0].shape[0] == per_rank for r in ranks)


def test_eval_loader_yields_normalised_images_in_order() -> None:
    images, labels = _data(20)
    aug = BatchAugment.eval_transform()
    loader = TensorLoader(images, labels, batch_size=6, shuffle=False, augment=aug)
    x = torch.cat([x for x, _ in loader.epoch(0)])
    assert torch.equal(x, aug.apply(images, None))


def test_user_errors() -> None:
    images, labels = _data(10)
    with pytest.raises(ValueError, match="divisible by world_size=4"):
        TensorLoader(images, labels, batch_size=6, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        TensorLoader(images, labels, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="uint8"):
        TensorLoader(images.float(), labels, batch_size=4)
    with pytest.raises(ValueError, match="labels"):
        TensorLoader(images, labels[:5], batch_size=4)
    loader = TensorLoader(images, labels, batch_size=4)
    with pytest.raises(ValueError, match="start_step"):
        next(loader.epoch(0, start_step=9))
    with pytest.raises(TypeError, match="epoch"):
        iter(loader)


def test_synthetic_set_is_learnable_in_two_epochs() -> None:
    torch.manual_seed(0)
    data = synthetic_cifar100(n_train=1000, n_test=200, num_classes=10, seed=0)
    loader = TensorLoader(
        data.train_images, data.train_labels, batch_size=50, augment=BatchAugment(), seed=0
    )
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for epoch in range(2):
        for x, y in loader.epoch(epoch):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    evaluator = BatchAugment.eval_transform()
    with torch.no_grad():
        acc = (model(evaluator(data.test_images)).argmax(1) == data.test_labels).float().mean()
    assert acc > 0.5, acc
