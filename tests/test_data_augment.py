"""Property tests for the batched augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from condattn.data import CIFAR100_MEAN, CIFAR100_STD, AugParams, BatchAugment

# Example counts come from the hypothesis profile (tests/conftest.py, HYPOTHESIS_PROFILE).
SETTINGS = settings(deadline=None)
PAD = 4

batch_sizes = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _images(b: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=gen)


def _raw() -> BatchAugment:
    """Geometry only: output in 0..1 units (x / 255), so exact comparisons are easy."""
    return BatchAugment(normalize=False)


def _reference_crop_flip(x: torch.Tensor, p: AugParams) -> torch.Tensor:
    """Slices the zero-padded image per sample, then mirrors: the definition of crop + flip."""
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    out = []
    for i in range(x.shape[0]):
        dy, dx = int(p.dy[i]), int(p.dx[i])
        crop = padded[i, :, dy : dy + 32, dx : dx + 32]
        out.append(crop.flip(-1) if p.flip[i] else crop)
    return torch.stack(out)


def _with(p: AugParams, **fields) -> AugParams:
    values = {"dx": p.dx, "dy": p.dy, "flip": p.flip, "angle": p.angle} | fields
    return AugParams(**values)


@SETTINGS
@given(b=batch_sizes, seed=seeds, channels_last=st.booleans())
def test_shapes_dtypes_and_layout(b: int, seed: int, channels_last: bool) -> None:
    aug = BatchAugment(channels_last=channels_last)
    out = aug(_images(b, seed), generator=torch.Generator().manual_seed(seed))
    assert out.shape == (b, 3, 32, 32) and out.dtype == torch.float32
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()
    half = BatchAugment(dtype=torch.bfloat16)(_images(b, seed))
    assert half.dtype == torch.bfloat16


@SETTINGS
@given(b=batch_sizes, seed=seeds)
def test_normalised_values_are_finite_and_bounded(b: int, seed: int) -> None:
    out = BatchAugment()(_images(b, seed), generator=torch.Generator().manual_seed(seed))
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    assert torch.isfinite(out).all()
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()


def test_eval_transform_only_normalises() -> None:
    x = _images(4)
    out = BatchAugment.eval_transform()(x)
    mean, std = torch.tensor(CIFAR100_MEAN).view(3, 1, 1), torch.tensor(CIFAR100_STD).view(3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std, rtol=0, atol=1e-5)
    assert not BatchAugment.eval_transform().is_random


@SETTINGS
@given(n=st.integers(min_value=1, max_value=400), seed=seeds)
def test_param_bounds(n: int, seed: int) -> None:
    p = BatchAugment().sample_params(n, generator=torch.Generator().manual_seed(seed))
    assert len(p) == n and p.dx.dtype == torch.int64 and p.flip.dtype == torch.bool
    for offset in (p.dx, p.dy):
        assert offset.min() >= 0 and offset.max() <= 2 * PAD
    assert p.angle.abs().max() <= 15.0


def test_param_distribution_covers_the_range() -> None:
    p = BatchAugment().sample_params(20000, generator=torch.Generator().manual_seed(0))
    assert set(p.dx.tolist()) == set(range(2 * PAD + 1)) == set(p.dy.tolist())
    assert 0.48 < p.flip.float().mean() < 0.52
    assert p.angle.min() < -14.9 and p.angle.max() > 14.9 and abs(p.angle.mean()) < 0.3


def test_switched_off_steps_get_identity_params_and_keep_the_others() -> None:
    full = BatchAugment().sample_params(50, generator=torch.Generator().manual_seed(1))
    part = BatchAugment(crop=False, rotate=False).sample_params(
        50, generator=torch.Generator().manual_seed(1)
    )
    assert (part.dx == PAD).all() and (part.dy == PAD).all() and (part.angle == 0).all()
    assert torch.equal(part.flip, full.flip)  # same random stream for the step left on


@SETTINGS
@given(b=batch_sizes, seed=seeds)
def test_flip_is_an_exact_mirror(b: int, seed: int) -> None:
    x = _images(b, seed)
    p = AugParams.identity(b, padding=PAD)
    flipped = _raw().apply(x, _with(p, flip=torch.ones(b, dtype=torch.bool)))
    assert torch.equal(flipped, _raw().apply(x.flip(-1), p))
    assert torch.equal(_raw().apply(x, p), _raw().apply(x, None))  # identity params


@SETTINGS
@given(b=batch_sizes, seed=seeds)
def test_pure_crop_and_flip_equal_slicing_the_padded_image(b: int, seed: int) -> None:
    aug = _raw()
    x = _images(b, seed)
    p = _with(
        aug.sample_params(b, generator=torch.Generator().manual_seed(seed)), angle=torch.zeros(b)
    )
    expected = aug.apply(_reference_crop_flip(x, p), None)
    assert torch.equal(aug.apply(x, p), expected)  # integer fast path


@SETTINGS
@given(b=batch_sizes, seed=seeds)
def test_fused_warp_is_exact_for_zero_angles(b: int, seed: int) -> None:
    """With one rotated sample the whole batch takes the grid_sample path; the unrotated samples
    must still be exact integer crops (and flips)."""
    aug = _raw()
    x = _images(b + 1, seed)
    p = aug.sample_params(b + 1, generator=torch.Generator().manual_seed(seed))
    angle = torch.zeros(b + 1)
    angle[-1] = 7.0
    p = _with(p, angle=angle)
    out = aug.apply(x, p)
    expected = aug.apply(_reference_crop_flip(x[:b], p[:b]), None)
    assert torch.equal(out[:b], expected)


def test_rotation_zero_is_identity_and_small_angles_change_the_image() -> None:
    aug, x = _raw(), _images(3)
    p = AugParams.identity(3, padding=PAD)
    assert torch.equal(aug.apply(x, _with(p, angle=torch.zeros(3))), aug.apply(x, None))
    rotated = aug.apply(x, _with(p, angle=torch.tensor([2.0, -2.0, 15.0])))
    for i in range(3):
        assert not torch.allclose(rotated[i], aug.apply(x, None)[i], atol=1e-2), i


def test_rotation_convention_is_counter_clockwise() -> None:
    aug, x = _raw(), _images(2)
    p = _with(AugParams.identity(2, padding=PAD), angle=torch.tensor([90.0, -90.0]))
    out = aug.apply(x, p)
    expected = aug.apply(torch.stack([x[0].rot90(1, (-2, -1)), x[1].rot90(-1, (-2, -1))]), None)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_rotation_matches_torchvision_rotate() -> None:
    from torchvision.transforms.v2 import functional as TF

    aug, x = _raw(), _images(2)
    out = aug.apply(x, _with(AugParams.identity(2, padding=PAD), angle=torch.tensor([10.0, -13.0])))
    for i, angle in enumerate((10.0, -13.0)):
        ref = TF.rotate(x[i].float(), angle, interpolation=TF.InterpolationMode.BILINEAR) / 255
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-3)


@SETTINGS
@given(b=batch_sizes, seed=seeds)
def test_determinism_under_a_seed(b: int, seed: int) -> None:
    aug, x = BatchAugment(), _images(b, seed)
    first = aug(x, generator=torch.Generator().manual_seed(seed))
    again = aug(x, generator=torch.Generator().manual_seed(seed))
    other = aug(x, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@SETTINGS
@given(
    per_rank=st.integers(min_value=1, max_value=4),
    world=st.sampled_from([1, 2, 4]),
    seed=seeds,
)
def test_global_params_sliced_per_rank_equal_the_global_batch(
    per_rank: int, world: int, seed: int
) -> None:
    aug, n = BatchAugment(), per_rank * world
    x = _images(n, seed)
    params = aug.sample_params(n, generator=torch.Generator().manual_seed(seed))
    whole = aug.apply(x, params)
    parts = [
        aug.apply(x[r * per_rank : (r + 1) * per_rank], params[r * per_rank : (r + 1) * per_rank])
        for r in range(world)
    ]
    assert torch.equal(torch.cat(parts), whole)


def test_user_errors() -> None:
    aug = BatchAugment()
    with pytest.raises(ValueError, match="uint8"):
        aug(_images(2).float())
    with pytest.raises(ValueError, match="2 parameter sets"):
        aug.apply(_images(3), aug.sample_params(2))
    bad = _with(AugParams.identity(2, padding=PAD), dx=torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="crop offsets"):
        aug.apply(_images(2), bad)
    with pytest.raises(ValueError, match="channels"):
        aug.apply(torch.zeros(1, 1, 32, 32, dtype=torch.uint8), None)
    with pytest.raises(ValueError, match="floating"):
        BatchAugment(dtype=torch.int32)
    assert BatchAugment().apply(_images(0), AugParams.identity(0)).shape == (0, 3, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    aug, x = BatchAugment(), _images(16)
    params = aug.sample_params(16, generator=torch.Generator().manual_seed(0))
    cpu = aug.apply(x, params)
    gpu = aug.apply(x.cuda(), params)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)
