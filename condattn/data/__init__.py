"""Datasets as uint8 tensors in one container, batched tensor augmentation and an in-memory loader.

A dict (:data:`DATASETS`) maps a name ("cifar100", "cifar10", "imagefolder", "synthetic") to a
loader; every loader returns an :class:`ImageData` (uint8 images, labels, classes, the train
split's mean/std and a source string), so the augmentation and the training loop never change
per dataset. Synthetic sets in the CIFAR file formats serve the tests.
"""

from condattn.data.augment import AugParams, BatchAugment
from condattn.data.cifar import (
    CIFAR10,
    CIFAR100,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CifarSpec,
    data_env_path,
    find_cifar,
    find_cifar10,
    find_cifar100,
    load_cifar,
    load_cifar10,
    load_cifar100,
)
from condattn.data.container import (
    CifarData,
    CifarDataError,
    CifarNotFoundError,
    DataError,
    DataNotFoundError,
    ImageData,
    channel_stats,
    source_origin,
)
from condattn.data.datasets import (
    DATASETS,
    LoadOptions,
    list_datasets,
    load_dataset,
    register_dataset,
)
from condattn.data.imagefolder import IMAGE_EXTENSIONS, decode_image, load_imagefolder, split_files
from condattn.data.loader import TensorLoader, epoch_generator
from condattn.data.rrc import BatchRandomResizedCrop, CropParams
from condattn.data.synthetic import (
    synthetic_cifar100,
    write_synthetic_cifar10,
    write_synthetic_cifar100,
)

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "AugParams",
    "BatchAugment",
    "BatchRandomResizedCrop",
    "CifarData",
    "CifarDataError",
    "CifarNotFoundError",
    "CifarSpec",
    "CropParams",
    "DataError",
    "DataNotFoundError",
    "ImageData",
    "LoadOptions",
    "TensorLoader",
    "channel_stats",
    "data_env_path",
    "decode_image",
    "epoch_generator",
    "find_cifar",
    "find_cifar10",
    "find_cifar100",
    "list_datasets",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_imagefolder",
    "register_dataset",
    "source_origin",
    "split_files",
    "synthetic_cifar100",
    "write_synthetic_cifar10",
    "write_synthetic_cifar100",
]
