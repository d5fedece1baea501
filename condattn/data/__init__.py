"""CIFAR-100 data: a pickle reader, batched tensor augmentation, an in-memory loader, and
synthetic sets in the same format for tests."""

from condattn.data.augment import AugParams, BatchAugment
from condattn.data.cifar import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CifarData,
    CifarDataError,
    CifarNotFoundError,
    channel_stats,
    find_cifar100,
    load_cifar100,
)
from condattn.data.loader import TensorLoader, epoch_generator
from condattn.data.synthetic import synthetic_cifar100, write_synthetic_cifar100

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "AugParams",
    "BatchAugment",
    "CifarData",
    "CifarDataError",
    "CifarNotFoundError",
    "TensorLoader",
    "channel_stats",
    "epoch_generator",
    "find_cifar100",
    "load_cifar100",
    "synthetic_cifar100",
    "write_synthetic_cifar100",
]
