"""Tests for the CIFAR-10 reader and the dataset registry, on small files of their own."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from condattn.data import (
    CIFAR10,
    DATASETS,
    DataError,
    DataNotFoundError,
    ImageData,
    LoadOptions,
    channel_stats,
    find_cifar10,
    list_datasets,
    load_cifar10,
    load_dataset,
    register_dataset,
    write_synthetic_cifar10,
    write_synthetic_cifar100,
)
from condattn.data.synthetic import make_synthetic_arrays

N_TRAIN, N_TEST = 23, 7  # 23 train images: batches of 5, 5, 5, 4, 4


def test_reads_all_five_batches_in_order(tmp_path: Path) -> None:
    folder = write_synthetic_cifar10(tmp_path, n_train=N_TRAIN, n_test=N_TEST, seed=2)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR10.files)
    data = load_cifar10(tmp_path)
    images, labels = make_synthetic_arrays(n=N_TRAIN, num_classes=10, seed=2, split="train")
    assert torch.equal(data.train_images, torch.from_numpy(images))
    assert torch.equal(data.train_labels, torch.from_numpy(labels))
    test_x, test_y = make_synthetic_arrays(n=N_TEST, num_classes=10, seed=2, split="test")
    assert torch.equal(data.test_images, torch.from_numpy(test_x))
    assert torch.equal(data.test_labels, torch.from_numpy(test_y))
    assert data.classes == [f"class_{k:03d}" for k in range(10)]
    mean, std = channel_stats(data.train_images)
    assert data.mean == tuple(round(m, 6) for m in mean)
    assert data.std == tuple(round(s, 6) for s in std)
    with open(folder / "data_batch_4", "rb") as f:  # really the official per-batch layout
        batch = pickle.load(f, encoding="bytes")
    assert batch[b"data"].shape == (4, 3072) and len(batch[b"labels"]) == 4


def test_archive_and_folder_agree(tmp_path: Path) -> None:
    folder = write_synthetic_cifar10(tmp_path / "f", n_train=N_TRAIN, n_test=N_TEST)
    archive = write_synthetic_cifar10(
        tmp_path / "a", n_train=N_TRAIN, n_test=N_TEST, as_archive=True
    )
    assert archive.name == "cifar-10-python.tar.gz"
    a = load_cifar10(folder)
    b = load_cifar10(archive, cache_dir=tmp_path / "cache")
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert "archive" in b.source and find_cifar10([tmp_path / "a"]) == tmp_path / "a"


def test_missing_batch_and_wrong_dataset(tmp_path: Path) -> None:
    folder = write_synthetic_cifar10(tmp_path / "ten", n_train=N_TRAIN, n_test=N_TEST)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="missing CIFAR-10 file") as info:
        load_cifar10(folder)
    assert str(folder / "data_batch_3") in str(info.value)
    write_synthetic_cifar100(tmp_path / "hundred", n_train=10, n_test=5, num_classes=5)
    with pytest.raises(DataNotFoundError, match="no CIFAR-10 data at") as info:
        load_cifar10(tmp_path / "hundred")
    assert "cifar-10-python.tar.gz" in str(info.value)


def test_labels_out_of_range(tmp_path: Path) -> None:
    folder = write_synthetic_cifar10(tmp_path, n_train=N_TRAIN, n_test=N_TEST, num_classes=10)
    with open(folder / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"labels"] = [10] * N_TEST
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(DataError, match=r"\[0, 10\)") as info:
        load_cifar10(folder)
    assert str(folder / "test_batch") in str(info.value)


def test_download_uses_the_cifar10_url_and_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake(url, download_root, filename, md5):
        calls.append((url, filename, md5))
        write_synthetic_cifar10(Path(download_root), n_train=N_TRAIN, n_test=N_TEST)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake)
    data = load_cifar10(tmp_path / "new", download=True)
    assert calls == [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        )
    ]
    assert data.train_images.shape == (N_TRAIN, 3, 32, 32)


# --- the registry ------------------------------------------------------------------------------


def test_registry_names_and_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert list_datasets() == ["cifar10", "cifar100", "imagefolder", "synthetic"]
    write_synthetic_cifar10(tmp_path, n_train=N_TRAIN, n_test=N_TEST)
    write_synthetic_cifar100(tmp_path, n_train=12, n_test=4, num_classes=4)
    ten = load_dataset("cifar10", LoadOptions(root=tmp_path))
    hundred = load_dataset("cifar100", LoadOptions(root=tmp_path))
    assert (ten.num_classes, hundred.num_classes) == (10, 4)
    synth = load_dataset("synthetic", LoadOptions(n_train=30, n_test=10))
    assert isinstance(synth, ImageData) and synth.train_images.shape == (30, 3, 32, 32)
    monkeypatch.setenv("CONDATTN_DATA", str(tmp_path))
    assert load_dataset("cifar10").num_classes == 10  # found through $CONDATTN_DATA
    with pytest.raises(ValueError, match=r"registered: \['cifar10', 'cifar100'"):
        load_dataset("cifar1000")
    with pytest.raises(ValueError, match="32 px"):
        load_dataset("cifar10", LoadOptions(root=tmp_path, image_size=64))


def test_registry_errors_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDATTN_DATA", str(tmp_path / "missing"))
    for name in ("cifar100", "cifar10"):
        with pytest.raises(DataNotFoundError, match="does not exist") as info:
            load_dataset(name)
        assert str(tmp_path / "missing") in str(info.value)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("cifar100", LoadOptions(root=tmp_path / "also-missing"))
    monkeypatch.delenv("CONDATTN_DATA")
    with pytest.raises(DataNotFoundError, match="needs a root"):
        load_dataset("imagefolder", LoadOptions(image_size=8))


def test_register_dataset_refuses_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("condattn.data.datasets.DATASETS", dict(DATASETS))
    from condattn.data import datasets

    def tiny(opts: LoadOptions) -> ImageData:
        x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8) + torch.arange(2).view(2, 1, 1, 1).byte()
        y = torch.arange(2)
        return ImageData(x, y, x, y, ["a", "b"], "tiny")

    datasets.register_dataset("tiny", tiny)
    assert load_dataset("tiny").mean == (0.001961,) * 3  # 0 and 1 of 255, averaged
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("tiny", tiny)
    assert np.isclose(load_dataset("tiny").std[0], 0.5 / 255, atol=1e-6)
