"""Tests for the batched random-resized-crop augmentation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from condattn.data import BatchRandomResizedCrop, CropParams, TensorLoader

SETTINGS = settings(deadline=None)
S = 40  # above 32 px, where the rrc recipe applies


def _images(b: int, seed: int = 0, size: int = S) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=gen)


def _raw(**kwargs) -> BatchRandomResizedCrop:
    return BatchRandomResizedCrop(size=S, normalize=False, **kwargs)


@SETTINGS
@given(b=st.integers(1, 5), seed=st.integers(0, 2**31 - 1), channels_last=st.booleans())
def test_shapes_dtype_and_seeding(b: int, seed: int, channels_last: bool) -> None:
    aug = BatchRandomResizedCrop(size=S, channels_last=channels_last)
    x = _images(b, seed)
    out = aug(x, generator=torch.Generator().manual_seed(seed))
    assert out.shape == (b, 3, S, S) and out.dtype == torch.float32
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout)
    again = aug(x, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out, again)


def test_different_seeds_differ() -> None:
    aug, x = _raw(), _images(8)
    a = aug(x, generator=torch.Generator().manual_seed(1))
    b = aug(x, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("size", [S, 32])
def test_full_box_is_the_image_and_flip_mirrors(size: int) -> None:
    aug, x = BatchRandomResizedCrop(size=size, normalize=False), _images(4, size=size)
    p = CropParams.identity(4, size=(size, size))
    flipped = CropParams(p.top, p.left, p.height, p.width, torch.ones(4, dtype=torch.bool))
    same, mirrored = aug.apply(x, p), aug.apply(x, flipped)
    plain, plain_flipped = aug.apply(x, None), aug.apply(x.flip(-1), None)  # normalise only
    if size == 32:  # a power of two: the pixel centres are exact in float32
        assert torch.equal(same, plain) and torch.equal(mirrored, plain_flipped)
    assert torch.allclose(same, plain, rtol=0, atol=5e-6)
    assert torch.allclose(mirrored, plain_flipped, rtol=0, atol=5e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_boxes_follow_the_torchvision_rule(seed: int) -> None:
    aug = _raw(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    p = aug.sample_params(64, generator=torch.Generator().manual_seed(seed))
    assert ((p.top >= 0) & (p.left >= 0) & (p.height >= 1) & (p.width >= 1)).all()
    assert ((p.top + p.height <= S) & (p.left + p.width <= S)).all()
    share = (p.height * p.width).double() / (S * S)
    aspect = p.width.double() / p.height.double()
    # Rounding w and h to whole pixels moves the share and ratio a little past the ranges.
    slack = 2.5 / S
    assert (share >= 0.08 - 2 * slack).all() and (share <= 1.0).all()
    assert (aspect >= 3 / 4 - 4 * slack).all() and (aspect <= 4 / 3 + 4 * slack).all()


def test_fallback_is_the_centred_ratio_clamped_box() -> None:
    aug = _raw(scale=(0.95, 1.0), ratio=(3.0, 4.0))  # no try fits a square image
    p = aug.sample_params(5, generator=torch.Generator().manual_seed(0))
    assert p.width.tolist() == [S] * 5 and p.height.tolist() == [round(S / 3)] * 5
    assert p.top.tolist() == [(S - round(S / 3)) // 2] * 5 and p.left.tolist() == [0] * 5


def test_resampling_equals_interpolating_the_crop() -> None:
    aug, x = _raw(flip=False), _images(6, seed=3)
    p = aug.sample_params(6, generator=torch.Generator().manual_seed(5))
    out = aug.apply(x, p)
    for i in range(6):
        top, left, h, w = (int(v[i]) for v in (p.top, p.left, p.height, p.width))
        crop = x[i : i + 1, :, top : top + h, left : left + w].float()
        ref = F.interpolate(crop, size=(S, S), mode="bilinear", align_corners=False) / 255
        # Inside the box both sample the same pixels; at its rim interpolate clamps to the box
        # while grid_sample may read the neighbour outside it, so compare the interior.
        assert torch.allclose(out[i, :, 1:-1, 1:-1], ref[0, :, 1:-1, 1:-1], atol=1e-5), i


def test_params_slice_like_the_batch() -> None:
    aug, x = _raw(), _images(8, seed=4)
    p = aug.sample_params(8, generator=torch.Generator().manual_seed(9))
    whole = aug.apply(x, p)
    assert torch.allclose(aug.apply(x[2:5], p[2:5]), whole[2:5], atol=0, rtol=0)


def test_flip_switch_leaves_the_boxes() -> None:
    on = _raw(flip=True).sample_params(16, generator=torch.Generator().manual_seed(2))
    off = _raw(flip=False).sample_params(16, generator=torch.Generator().manual_seed(2))
    for name in ("top", "left", "height", "width"):
        assert torch.equal(getattr(on, name), getattr(off, name))
    assert on.flip.any() and not off.flip.any()


def test_normalises_with_given_stats() -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 1.0)
    aug = BatchRandomResizedCrop(size=S, mean=mean, std=std)
    x = _images(2)
    out = aug.apply(x, CropParams.identity(2, size=(S, S)))
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    assert torch.allclose(out, ref, atol=1e-5)


def test_in_the_loader_plan_is_reproducible() -> None:
    x, y = _images(12, seed=6), torch.arange(12) % 3
    make = lambda: TensorLoader(x, y, batch_size=4, augment=_raw(), seed=3)  # noqa: E731
    a = [b for b, _ in make().epoch(1)]
    b = [b for b, _ in make().epoch(1)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(batch.shape == (4, 3, S, S) for batch in a)


def test_errors() -> None:
    with pytest.raises(ValueError, match="scale"):
        BatchRandomResizedCrop(size=S, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="ratio"):
        BatchRandomResizedCrop(size=S, ratio=(0.0, 1.0))
    with pytest.raises(ValueError, match="this crop is for"):
        _raw()(_images(2, size=32))
    assert math.isclose(_raw().ratio[1], 4 / 3)
