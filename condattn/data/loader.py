"""An in-memory batch iterator over uint8 image tensors (airbench-style, no worker processes).

Everything random in epoch ``e`` (the order and every augmentation parameter) comes from
generators seeded by ``(seed, e)`` alone and is drawn for the whole epoch up front, so:

- a run resumed at epoch ``e`` (even at step ``k``, via ``start_step``) sees exactly the batches of
  the uninterrupted run;
- under data parallelism every rank draws the same GLOBAL permutation and parameters and keeps the
  contiguous slice ``rank`` of each global batch, so ``world_size`` ranks together see exactly the
  samples and augmentations of the single-process run with the same global batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from condattn._io import derive_seed
from condattn.data.augment import AugParams, BatchAugment

__all__ = ["TensorLoader", "epoch_generator"]


def epoch_generator(seed: int, epoch: int, stream: str) -> torch.Generator:
    """A CPU generator seeded by ``(seed, epoch, stream)``, independent of process and device.

    Args:
        seed: the run's seed.
        epoch: the epoch number.
        stream: a name that separates independent streams ("order", "augment").
    """
    return torch.Generator().manual_seed(derive_seed(seed, epoch, stream))


class TensorLoader:
    """Yields ``(x, y)`` batches from images held in memory on one device.

    Args:
        images: uint8 ``(N, C, H, W)``; moved to ``device`` once.
        labels: integer ``(N,)``; moved to ``device`` once, as int64.
        batch_size: the GLOBAL batch size (all ranks together); a multiple of ``world_size``.
        shuffle: a fresh permutation every epoch (else the stored order).
        drop_last: drop the last incomplete global batch.
        augment: applied to every batch; None yields the uint8 images unchanged. For evaluation
            use ``BatchAugment.eval_transform()`` (normalise only).
        seed: seeds the order and the augmentation (with the epoch number).
        device: where the data lives and batches are produced (default: the images' device).
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of data-parallel processes.

    Each rank's batches have ``batch_size // world_size`` samples, except the last incomplete
    global batch (``drop_last=False``), which is split as evenly as possible and may leave a rank
    a smaller (even empty) batch; use ``drop_last=True`` for training.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be (N,) with N = {images.shape[0]}, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world={world_size}")
        if batch_size % world_size:
            raise ValueError(
                f"the global batch_size={batch_size} must be divisible by world_size={world_size} "
                f"(each rank takes an equal contiguous slice); use e.g. "
                f"{max(world_size, batch_size // world_size * world_size)}"
            )
        if drop_last and images.shape[0] < batch_size:
            raise ValueError(
                f"drop_last=True with {images.shape[0]} samples and batch_size={batch_size} "
                "gives no batches at all"
            )
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed = augment, seed
        self.rank, self.world_size = rank, world_size

    @property
    def num_samples(self) -> int:
        """Samples in the dataset (all ranks)."""
        return self.images.shape[0]

    @property
    def local_batch_size(self) -> int:
        """Samples per full batch on this rank."""
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self):
        raise TypeError("TensorLoader needs an epoch number: iterate over loader.epoch(e)")

    def __repr__(self) -> str:
        return (
            f"TensorLoader(n={self.num_samples}, batch_size={self.batch_size}, "
            f"steps={len(self)}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
            f"augment={self.augment!r}, seed={self.seed}, device={self.device}, "
            f"rank={self.rank}/{self.world_size})"
        )

    def plan(self, epoch: int) -> tuple[torch.Tensor, AugParams | None]:
        """The GLOBAL order and augmentation parameters of an epoch, on the CPU.

        Returns:
            ``(order, params)``: ``order[i]`` is the dataset index of the ``i``-th sample of the
            epoch and ``params[i]`` its augmentation (None when there is no random augmentation).
        """
        n = self.num_samples
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, epoch, "order"))
        else:
            order = torch.arange(n)
        params = None
        if self.augment is not None and self.augment.is_random:
            gen = epoch_generator(self.seed, epoch, "augment")
            params = self.augment.sample_params(n, generator=gen)
        return order, params

    def _rank_slice(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous part of the global batch ``[start, stop)``."""
        size = stop - start
        if size == self.batch_size:
            local = self.local_batch_size
            return start + self.rank * local, start + (self.rank + 1) * local
        # A last incomplete batch: split like torch.tensor_split (sizes differ by at most one).
        base, extra = divmod(size, self.world_size)
        lo = start + self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def epoch(
        self, epoch: int, *, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterates over one epoch's batches for this rank.

        Args:
            epoch: the epoch number; with ``seed`` it fixes the order and the augmentation.
            start_step: skip the first ``start_step`` batches (for resuming mid-epoch).

        Yields:
            ``(x, y)``: the (augmented) images and int64 labels on ``device``.
        """
        steps = len(self)
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step must lie in [0, {steps}], got {start_step}")
        order, params = self.plan(epoch)
        order = order.to(self.device)
        for step in range(start_step, steps):
            start = step * self.batch_size
            lo, hi = self._rank_slice(start, min(start + self.batch_size, self.num_samples))
            idx = order[lo:hi]
            x, y = self.images[idx], self.labels[idx]
            if self.augment is not None:
                x = self.augment.apply(x, params[lo:hi] if params is not None else None)
            yield x, y
