"""Batched random-resized-crop + flip on tensors: the usual ImageNet training augmentation.

``torchvision.transforms.RandomResizedCrop(size, scale, ratio)`` followed by
``RandomHorizontalFlip()``, for a whole uint8 batch at once. The crop boxes are drawn exactly as
torchvision draws them (up to 10 tries of an area share in ``scale`` and a log-uniform aspect
ratio in ``ratio``, a random integer position; else the centre crop clamped to ``ratio``), but on
the CPU from a ``torch.Generator`` and vectorised over the batch. Each box is then resized back to
the image size by one bilinear ``grid_sample`` for the batch: for output pixel ``k`` of ``S`` the
source column is ``left + (k + 0.5) * width / S - 0.5`` (``F.interpolate``'s rule with
``align_corners=False``), mirrored when flipped. A full-image box reproduces the image up to
float32 rounding of the normalised coordinates (below 1e-6 of the 0..1 range; exactly when the
size is a power of two).

As in :mod:`condattn.data.augment`, :meth:`sample_params` draws and :meth:`apply` applies, so the
results are reproducible under a seed, identical across devices, and data-parallel ranks can draw
the GLOBAL batch's parameters and each apply its slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from condattn.data.augment import _BatchTransform
from condattn.data.cifar import CIFAR100_MEAN, CIFAR100_STD

__all__ = ["BatchRandomResizedCrop", "CropParams"]

_TRIES = 10  # torchvision's number of attempts before the centre-crop fallback


@dataclass(frozen=True)
class CropParams:
    """Per-sample crop boxes (integer pixels) and flips for a batch of ``n`` images.

    Attributes:
        top: int64 ``(n,)``, first row of the box.
        left: int64 ``(n,)``, first column.
        height: int64 ``(n,)``, rows in the box (``>= 1``).
        width: int64 ``(n,)``, columns in the box (``>= 1``).
        flip: bool ``(n,)``, mirror left-right.
    """

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.top, self.left, self.height, self.width, self.flip)

    def __len__(self) -> int:
        return self.top.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> CropParams:
        """Selects samples, e.g. ``params[r * b : (r + 1) * b]`` for rank ``r``."""
        return CropParams(*(t[index] for t in self._fields()))

    def to(self, device: torch.device | str) -> CropParams:
        """Returns the parameters on ``device``."""
        return CropParams(*(t.to(device) for t in self._fields()))

    @classmethod
    def identity(cls, n: int, *, size: tuple[int, int]) -> CropParams:
        """The full image, unflipped, for ``n`` images of ``size = (H, W)``."""
        zeros = torch.zeros(n, dtype=torch.int64)
        h, w = (torch.full((n,), s, dtype=torch.int64) for s in size)
        return cls(zeros, zeros.clone(), h, w, torch.zeros(n, dtype=torch.bool))


class BatchRandomResizedCrop(_BatchTransform):
    """Random resized crop + horizontal flip + normalisation for a uint8 batch.

    Args:
        size: the images' ``(H, W)`` (or one int for square images); the output has the same
            size (eval then needs no resize: the stored images are already at this size).
        scale: range of the box's share of the image area (torchvision/ImageNet: 0.08 to 1).
        ratio: range of the box's aspect ratio width / height, drawn log-uniformly.
        flip: mirror left-right with probability ``flip_p``.
        flip_p: flip probability.
        normalize, mean, std, dtype, channels_last: as in
            :class:`~condattn.data.augment.BatchAugment`.

    Use one instance per thread (it keeps per-device scratch buffers).
    """

    def __init__(
        self,
        *,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        flip_p: float = 0.5,
        normalize: bool = True,
        mean: Sequence[float] = CIFAR100_MEAN,
        std: Sequence[float] = CIFAR100_STD,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            normalize=normalize, mean=mean, std=std, dtype=dtype, channels_last=channels_last
        )
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (H, W) with H, W >= 1, got {size}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must lie in [0, 1], got {flip_p}")
        self.size = size
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (ratio[0], ratio[1])
        self.flip, self.flip_p = flip, flip_p

    @property
    def is_random(self) -> bool:
        """Always True: the boxes are random (even at ``scale=(1, 1)`` when the ratio varies)."""
        return True

    def __repr__(self) -> str:
        return (
            f"BatchRandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip={self.flip}, flip_p={self.flip_p}, normalize={self.normalize}, "
            f"dtype={self.dtype}, channels_last={self.channels_last})"
        )

    def sample_params(self, n: int, *, generator: torch.Generator | None = None) -> CropParams:
        """Draws ``n`` boxes and flips on the CPU, torchvision's way, vectorised.

        The draws always happen in one fixed order (area shares, ratios, rows, columns, flips),
        so ``flip=False`` does not change the boxes.
        """
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"sample_params needs a CPU generator, got one on {generator.device}")
        h_img, w_img = self.size
        area = float(h_img * w_img)
        lo, hi = self.scale
        share = torch.rand(n, _TRIES, generator=generator, dtype=torch.float64) * (hi - lo) + lo
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        u = torch.rand(n, _TRIES, generator=generator, dtype=torch.float64)
        aspect = torch.exp(u * (log_hi - log_lo) + log_lo)
        w = torch.round(torch.sqrt(area * share * aspect)).to(torch.int64)
        h = torch.round(torch.sqrt(area * share / aspect)).to(torch.int64)
        ok = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
        first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # the first successful try
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        w_fb, h_fb = self._fallback()
        found = ok.any(dim=1)
        w, h = torch.where(found, w, w_fb), torch.where(found, h, h_fb)
        row_u = torch.rand(n, generator=generator, dtype=torch.float64)
        col_u = torch.rand(n, generator=generator, dtype=torch.float64)
        top = torch.where(found, (row_u * (h_img - h + 1)).floor().long(), (h_img - h) // 2)
        left = torch.where(found, (col_u * (w_img - w + 1)).floor().long(), (w_img - w) // 2)
        flip = torch.rand(n, generator=generator) < self.flip_p
        if not self.flip:
            flip.zero_()
        return CropParams(top, left, h, w, flip)

    def _fallback(self) -> tuple[int, int]:
        """torchvision's box when no try fits: the whole image, clamped to ``ratio``."""
        h_img, w_img = self.size
        in_ratio = w_img / h_img
        if in_ratio < self.ratio[0]:
            return w_img, round(w_img / self.ratio[0])
        if in_ratio > self.ratio[1]:
            return round(h_img * self.ratio[1]), h_img
        return w_img, h_img

    def __call__(
        self, images: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``apply(images, sample_params(len(images)))``."""
        return self.apply(images, self.sample_params(images.shape[0], generator=generator))

    def apply(self, images: torch.Tensor, params: CropParams | None) -> torch.Tensor:
        """Applies given boxes to a batch.

        Args:
            images: uint8 ``(B, C, H, W)`` with ``(H, W) == size``, on any device.
            params: ``B`` samples' boxes (moved to the images' device here); None means
                normalise only (the evaluation path).

        Returns:
            ``(B, C, H, W)`` tensor of ``self.dtype`` on the images' device.
        """
        self._check_images(images, None if params is None else len(params))
        if tuple(images.shape[2:]) != self.size:
            raise ValueError(f"images are {tuple(images.shape[2:])}, this crop is for {self.size}")
        if params is None or images.shape[0] == 0:
            return self._finish(images)
        return self._finish(self._resample(images, params), owned=True)

    def _resample(self, images: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Every box resized to the full size by one bilinear grid_sample; float32 in 0..255."""
        b, _, h_img, w_img = images.shape
        p = params.to("cpu")
        sign = 1.0 - 2.0 * p.flip.double()
        # Source = centre + half-extent * output coordinate, in normalised [-1, 1] units.
        sx = sign * p.width.double() / w_img
        sy = p.height.double() / h_img
        cx = (2.0 * p.left.double() + p.width.double()) / w_img - 1.0
        cy = (2.0 * p.top.double() + p.height.double()) / h_img - 1.0
        coef = torch.stack([sx, cx, sy, cy], dim=1).float()
        coef = coef.to(images.device, non_blocking=True).view(b, 4, 1, 1)
        u, v = self._base_grid(h_img, w_img, images.device)
        grid = self._scratch("grid", (b, h_img, w_img, 2), images.device)
        # Written element-wise (not a matmul), so TF32 settings cannot perturb the coordinates.
        grid[..., 0].copy_(coef[:, 1].expand(b, h_img, w_img)).addcmul_(coef[:, 0], u)
        grid[..., 1].copy_(coef[:, 3].expand(b, h_img, w_img)).addcmul_(coef[:, 2], v)
        src = self._scratch("src", tuple(images.shape), images.device).copy_(images)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
