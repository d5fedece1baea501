"""Batched CIFAR augmentation on tensors, on whatever device the images live.

The usual torchvision recipe ``RandomCrop(32, padding=4) -> RandomHorizontalFlip() ->
RandomRotation(15) -> ToTensor() -> Normalize`` runs per image through PIL. Here the three
geometric steps are one affine map per sample, so a whole batch goes through a single
``grid_sample`` (bilinear, zero fill). Composing, for an output pixel at normalised coordinates
``p = (u, v)`` (``align_corners=False``, image centre at 0)::

    rotate by a (counter-clockwise):  q = R(-a) p            sample the flipped image at q
    flip (s = -1 if flipped else 1):  r = (s * q_u, q_v)     sample the cropped image at r
    crop at offset (dx, dy):          t = r + (2 (dx - pad) / W, 2 (dy - pad) / H)
                                      sample the original (zero outside) at t

With ``a = 0`` every step is exact in float32 (the coordinates are dyadic rationals), so crop and
flip stay exact integer pixel moves; the tests check this against slicing a padded image.

Randomness: :meth:`BatchAugment.sample_params` draws every parameter on the CPU from a
``torch.Generator``; :meth:`BatchAugment.apply` only applies them. So results are reproducible
under a seed and identical across devices, and data-parallel ranks can draw the parameters of the
GLOBAL batch and each apply its own slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from condattn.data.cifar import CIFAR100_MEAN, CIFAR100_STD

__all__ = ["AugParams", "BatchAugment"]


@dataclass(frozen=True)
class AugParams:
    """Per-sample augmentation parameters for a batch of ``n`` images.

    Attributes:
        dx: int64 ``(n,)``, crop column offset into the padded image, in ``[0, 2 * padding]``;
            ``padding`` means no shift.
        dy: int64 ``(n,)``, crop row offset, same range.
        flip: bool ``(n,)``, mirror left-right.
        angle: float32 ``(n,)``, counter-clockwise rotation in degrees.
    """

    dx: torch.Tensor
    dy: torch.Tensor
    flip: torch.Tensor
    angle: torch.Tensor

    def __len__(self) -> int:
        return self.dx.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> AugParams:
        """Selects samples, e.g. ``params[r * b : (r + 1) * b]`` for rank ``r``."""
        return AugParams(self.dx[index], self.dy[index], self.flip[index], self.angle[index])

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> AugParams:
        """Returns the parameters on ``device`` (``non_blocking``: no host sync on CUDA)."""
        ts = (self.dx, self.dy, self.flip, self.angle)
        return AugParams(*(t.to(device, non_blocking=non_blocking) for t in ts))

    @classmethod
    def identity(cls, n: int, *, padding: int = 4) -> AugParams:
        """Parameters that leave ``n`` images unchanged (centre crop, no flip, no rotation)."""
        offset = torch.full((n,), padding, dtype=torch.int64)
        return cls(offset, offset.clone(), torch.zeros(n, dtype=torch.bool), torch.zeros(n))


class _BatchTransform:
    """What every batched transform shares: the normalisation, dtype/layout of the output and
    per-device caches.

    Args:
        normalize: map to ``(x / 255 - mean) / std`` per channel; else return ``x / 255``.
        mean: per-channel mean in [0, 1] units; pass the dataset's (``ImageData.mean``).
        std: per-channel std in [0, 1] units; all ones gives mean subtraction only (the paper's
            "mean RGB-channel subtraction", section 4).
        dtype: output floating dtype.
        channels_last: return a ``torch.channels_last`` tensor (faster convs on GPU).
    """

    def __init__(
        self,
        *,
        normalize: bool,
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype,
        channels_last: bool,
    ) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need one entry per channel and std > 0: {mean}, {std}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.normalize = normalize
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.dtype, self.channels_last = dtype, channels_last
        self._cache: dict[tuple, object] = {}  # per-device constants and scratch buffers

    def _check_images(self, images: torch.Tensor, n_params: int | None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"expected uint8 images (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if images.shape[1] != len(self.mean):
            raise ValueError(
                f"images have {images.shape[1]} channels but mean/std have {len(self.mean)}"
            )
        if n_params is not None and n_params != images.shape[0]:
            raise ValueError(f"{n_params} parameter sets for a batch of {images.shape[0]}")

    def _finish(self, x: torch.Tensor, *, owned: bool = False) -> torch.Tensor:
        """0..255 (uint8 or float) -> normalised ``self.dtype``, optionally channels_last.

        ``owned`` says ``x`` is a float32 temporary of ours that may be normalised in place.
        """
        scale, shift = self._affine(x.device)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if owned and x.dtype == torch.float32:
            out = x.mul_(scale).sub_(shift)  # in place: one big allocation less per batch
        else:
            out = torch.addcmul(-shift, x.float(), scale)
        return out.to(dtype=self.dtype, memory_format=memory_format)

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` with ``normalised = x * scale - shift`` for x in 0..255."""
        key = ("affine", device)
        if key not in self._cache:
            mean = torch.tensor(self.mean if self.normalize else (0.0,) * len(self.mean))
            std = torch.tensor(self.std if self.normalize else (1.0,) * len(self.std))
            scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
            shift = (mean / std).view(1, -1, 1, 1)
            self._cache[key] = (scale.to(device), shift.to(device))
        return self._cache[key]

    def _base_grid(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-centre coordinates in [-1, 1] (align_corners=False), exact in float32."""
        key = ("grid", h, w, device)
        if key not in self._cache:
            u = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
            v = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
            self._cache[key] = (u.view(1, 1, w).to(device), v.view(1, h, 1).to(device))
        return self._cache[key]

    def _scratch(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A reusable float32 buffer for internal temporaries (never returned to the caller).

        Re-using these avoids allocating (and, on CPU, page-faulting) several MB per batch.
        """
        key = ("scratch", name, device)
        numel = math.prod(shape)
        buf = self._cache.get(key)
        if buf is None or buf.numel() < numel:  # grow only: a smaller last batch re-uses it
            buf = torch.empty(numel, dtype=torch.float32, device=device)
            self._cache[key] = buf
        return buf[:numel].view(shape)


class BatchAugment(_BatchTransform):
    """Random crop + horizontal flip + rotation + normalisation for a uint8 batch.

    Args:
        crop: random ``H x W`` crop of the image zero-padded by ``padding`` on each side.
        padding: crop padding in pixels (4 for CIFAR); offsets are uniform in ``[0, 2 padding]``.
        flip: mirror left-right with probability ``flip_p``.
        flip_p: flip probability.
        rotate: rotate by an angle uniform in ``[-max_angle, max_angle]`` degrees (bilinear,
            zero fill), like ``torchvision.transforms.RandomRotation(max_angle)``.
        max_angle: largest rotation in degrees.
        normalize: map to ``(x / 255 - mean) / std`` per channel; else return ``x / 255``.
        mean: per-channel mean in [0, 1] units (CIFAR-100 train by default; pass the dataset's
            ``ImageData.mean``).
        std: per-channel std in [0, 1] units (all ones: mean subtraction only).
        dtype: output floating dtype.
        channels_last: return a ``torch.channels_last`` tensor (faster convs on GPU).

    Switch every random step off (``crop=flip=rotate=False``) for evaluation: normalise only.

    An instance keeps small per-device caches and scratch buffers, so use one instance per
    thread (or per CUDA stream).
    """

    def __init__(
        self,
        *,
        crop: bool = True,
        padding: int = 4,
        flip: bool = True,
        flip_p: float = 0.5,
        rotate: bool = True,
        max_angle: float = 15.0,
        normalize: bool = True,
        mean: Sequence[float] = CIFAR100_MEAN,
        std: Sequence[float] = CIFAR100_STD,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must lie in [0, 1], got {flip_p}")
        if max_angle < 0:
            raise ValueError(f"max_angle must be >= 0, got {max_angle}")
        super().__init__(
            normalize=normalize, mean=mean, std=std, dtype=dtype, channels_last=channels_last
        )
        self.crop, self.padding = crop, padding
        self.flip, self.flip_p = flip, flip_p
        self.rotate, self.max_angle = rotate, max_angle

    @classmethod
    def eval_transform(cls, **kwargs) -> BatchAugment:
        """The evaluation pipeline: no random steps, normalisation only."""
        return cls(crop=False, flip=False, rotate=False, **kwargs)

    @property
    def is_random(self) -> bool:
        """Whether any random step is on."""
        return (
            (self.crop and self.padding > 0)
            or (self.flip and self.flip_p > 0)
            or (self.rotate and self.max_angle > 0)
        )

    def __repr__(self) -> str:
        return (
            f"BatchAugment(crop={self.crop}, padding={self.padding}, flip={self.flip}, "
            f"flip_p={self.flip_p}, rotate={self.rotate}, max_angle={self.max_angle}, "
            f"normalize={self.normalize}, dtype={self.dtype}, channels_last={self.channels_last})"
        )

    def sample_params(self, n: int, *, generator: torch.Generator | None = None) -> AugParams:
        """Draws the parameters of ``n`` samples on the CPU.

        All four parameters are always drawn, in a fixed order, so switching one step off does not
        change the others' random stream; a switched-off step gets its identity value.

        Args:
            n: number of samples (the GLOBAL batch under data parallelism).
            generator: a CPU generator (None: torch's default CPU generator).
        """
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"sample_params needs a CPU generator (got one on {generator.device}), so that "
                "results do not depend on the device"
            )
        hi = 2 * self.padding + 1
        dx = torch.randint(0, hi, (n,), generator=generator)
        dy = torch.randint(0, hi, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < self.flip_p
        angle = (torch.rand(n, generator=generator) * 2 - 1) * self.max_angle
        if not self.crop:
            dx.fill_(self.padding)
            dy.fill_(self.padding)
        if not self.flip:
            flip.zero_()
        if not self.rotate:
            angle.zero_()
        return AugParams(dx, dy, flip, angle)

    def __call__(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Samples parameters and applies them: ``apply(images, sample_params(len(images)))``."""
        if not self.is_random:
            return self.apply(images, None)
        return self.apply(images, self.sample_params(images.shape[0], generator=generator))

    def apply(self, images: torch.Tensor, params: AugParams | None) -> torch.Tensor:
        """Applies given parameters to a batch.

        Args:
            images: uint8 ``(B, C, H, W)`` on any device.
            params: ``B`` samples' parameters (moved to the images' device here); None means
                normalise only.

        Returns:
            ``(B, C, H, W)`` tensor of ``self.dtype`` on the images' device.
        """
        self._check_images(images, None if params is None else len(params))
        if params is not None and params.dx.device.type == "cpu" and len(params):
            lo = min(int(params.dx.min()), int(params.dy.min()))
            hi = max(int(params.dx.max()), int(params.dy.max()))
            if lo < 0 or hi > 2 * self.padding:
                raise ValueError(
                    f"crop offsets must lie in [0, {2 * self.padding}] for padding="
                    f"{self.padding}, got [{lo}, {hi}]"
                )
        if params is None or images.shape[0] == 0:
            return self._finish(images)
        if bool((params.angle != 0).any()):
            return self._finish(self._warp(images, params), owned=True)  # float32, 0..255
        return self._finish(self._shift_flip(images, params))  # uint8, exact integer moves

    # --- internals -------------------------------------------------------------------------

    def _warp(self, images: torch.Tensor, params: AugParams) -> torch.Tensor:
        """Crop + flip + rotation as one bilinear grid_sample; returns float32 in 0..255."""
        b, _, h, w = images.shape
        # theta is built on the CPU in float64 from the CPU-drawn params, then moved once.
        p = params.to("cpu")
        rad = p.angle.double() * (math.pi / 180.0)
        cos, sin = torch.cos(rad), torch.sin(rad)
        sign = 1.0 - 2.0 * p.flip.double()
        tx = 2.0 * (p.dx.double() - self.padding) / w
        ty = 2.0 * (p.dy.double() - self.padding) / h
        # source = [[s cos, -s sin h/w], [sin w/h, cos]] @ (u, v) + (tx, ty)
        theta = torch.stack(
            [sign * cos, -sign * sin * (h / w), tx, sin * (w / h), cos, ty], dim=1
        ).float()
        theta = theta.to(images.device, non_blocking=True).view(b, 6, 1, 1)
        u, v = self._base_grid(h, w, images.device)
        # grid = theta @ (u, v, 1), written element-wise into a scratch buffer (not a matmul, so
        # TF32 settings cannot perturb the coordinates; zero angles stay exact).
        grid = self._scratch("grid", (b, h, w, 2), images.device)
        for k, g in enumerate((grid[..., 0], grid[..., 1])):
            g.copy_(theta[:, 3 * k + 2].expand(b, h, w))
            g.addcmul_(theta[:, 3 * k], u).addcmul_(theta[:, 3 * k + 1], v)
        src = self._scratch("src", tuple(images.shape), images.device).copy_(images)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _shift_flip(self, images: torch.Tensor, params: AugParams) -> torch.Tensor:
        """Crop + flip by integer gathers on uint8 (the rotation-free fast path)."""
        b, _, h, w = images.shape
        pad = self.padding
        p = params.to(images.device, non_blocking=True)  # no host sync per batch on a GPU
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        rows = p.dy.view(b, 1, 1) + torch.arange(h, device=images.device).view(1, h, 1)
        cols = torch.arange(w, device=images.device).view(1, 1, w)
        cols = torch.where(p.flip.view(b, 1, 1), w - 1 - cols, cols) + p.dx.view(b, 1, 1)
        batch = torch.arange(b, device=images.device).view(b, 1, 1)
        # Advanced indexing with a slice in between puts the channel dim last: (B, H, W, C).
        out = padded[batch, :, rows, cols]
        return out.permute(0, 3, 1, 2)
