"""Tests for the CIFAR-100 reader, on small files made by the synthetic writer."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from condattn.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CifarDataError,
    CifarNotFoundError,
    channel_stats,
    cifar_archive,
    find_cifar100,
    load_cifar100,
    source_origin,
    synthetic_cifar100,
    write_synthetic_cifar100,
)
from condattn.data import cifar as cifar_mod
from condattn.data.synthetic import make_synthetic_arrays

N_TRAIN, N_TEST, CLASSES = 60, 20, 10


def _write(root: Path, **kwargs) -> Path:
    opts = {"n_train": N_TRAIN, "n_test": N_TEST, "num_classes": CLASSES, "seed": 3}
    return write_synthetic_cifar100(root, **(opts | kwargs))


def _sorted_pairs(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, bytes]]:
    return sorted((int(y), x.numpy().tobytes()) for x, y in zip(images, labels, strict=True))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _write(root)
    return root


def test_official_order_reads_back_exactly(folder_root: Path) -> None:
    data = load_cifar100(folder_root)
    images, labels = make_synthetic_arrays(n=N_TRAIN, num_classes=CLASSES, seed=3, split="train")
    assert data.train_images.dtype == torch.uint8
    assert data.train_images.shape == (N_TRAIN, 3, 32, 32)
    assert data.test_images.shape == (N_TEST, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64
    assert torch.equal(data.train_images, torch.from_numpy(images))
    assert torch.equal(data.train_labels, torch.from_numpy(labels))
    assert data.classes == [f"class_{k:03d}" for k in range(CLASSES)]
    assert data.num_classes == CLASSES
    assert "folder" in data.source and str(folder_root.resolve()) in data.source


def test_in_memory_synthetic_equals_written_files(folder_root: Path) -> None:
    written, mem = (
        load_cifar100(folder_root),
        synthetic_cifar100(n_train=N_TRAIN, n_test=N_TEST, num_classes=CLASSES, seed=3),
    )
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(written, name), getattr(mem, name)), name
    assert written.classes == mem.classes


def test_shuffled_files_hold_the_same_pairs(tmp_path: Path) -> None:
    plain = load_cifar100(_write(tmp_path / "plain"))
    shuffled = load_cifar100(_write(tmp_path / "shuffled", shuffle=True))
    assert not torch.equal(plain.train_labels, shuffled.train_labels)  # really reordered
    for split in ("train", "test"):
        a = _sorted_pairs(getattr(plain, f"{split}_images"), getattr(plain, f"{split}_labels"))
        b = _sorted_pairs(
            getattr(shuffled, f"{split}_images"), getattr(shuffled, f"{split}_labels")
        )
        assert a == b, split


def test_every_root_form_gives_the_same_data(tmp_path: Path, cache: Path) -> None:
    folder = _write(tmp_path / "a")
    archive = _write(tmp_path / "b", as_archive=True)
    reference = load_cifar100(folder.parent)
    for root in (folder, folder / "train", archive.parent, archive, str(archive)):
        data = load_cifar100(root, cache_dir=cache)
        assert torch.equal(data.train_images, reference.train_images), root
        assert torch.equal(data.test_labels, reference.test_labels), root
    assert "archive" in load_cifar100(archive, cache_dir=cache).source


def test_archive_is_extracted_once_and_never_next_to_itself(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _write(tmp_path / "src", as_archive=True)
    before = sorted(os.listdir(archive.parent))
    first = load_cifar100(archive.parent, cache_dir=cache)
    assert "extracted to" in first.source and str(cache) in first.source
    assert sorted(os.listdir(archive.parent)) == before  # the source folder is left alone

    def no_extract(*args, **kwargs):
        raise AssertionError("re-extracted an archive that is already cached")

    monkeypatch.setattr(cifar_archive, "extract_archive", no_extract)
    second = load_cifar100(archive.parent, cache_dir=cache)
    assert "cached" in second.source
    assert torch.equal(first.train_images, second.train_images)

    monkeypatch.undo()
    _write(tmp_path / "src", as_archive=True, seed=4, n_train=N_TRAIN + 5)  # a changed archive
    third = load_cifar100(archive, cache_dir=cache)
    assert "extracted to" in third.source
    assert third.train_images.shape[0] == N_TRAIN + 5


def test_source_origin_is_the_archive_wherever_it_was_extracted(
    tmp_path: Path, cache: Path
) -> None:
    """Two machines extract one archive to two caches (named by size and mtime); compare.md
    must still name one dataset, so the origin drops the cache clause and keeps the archive."""
    archive = _write(tmp_path / "src", as_archive=True)
    fresh = load_cifar100(archive, cache_dir=cache).source
    cached = load_cifar100(archive, cache_dir=cache).source
    elsewhere = load_cifar100(archive, cache_dir=tmp_path / "other").source
    assert len({fresh, cached, elsewhere}) == 3  # the full lines keep where the data sit
    origins = {source_origin(s) for s in (fresh, cached, elsewhere)}
    assert origins == {f"archive {archive.resolve()}"}
    folder = load_cifar100(_write(tmp_path / "plain")).source
    assert source_origin(folder) == folder  # nothing to drop


def test_cache_dir_defaults_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDATTN_CACHE", str(tmp_path / "envcache"))
    archive = _write(tmp_path / "src", as_archive=True)
    assert str(tmp_path / "envcache") in load_cifar100(archive).source


def test_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    archive = _write(tmp_path / "src", as_archive=True)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(CifarDataError, match="extraction cache") as info:
        load_cifar100(archive, cache_dir=not_a_dir)
    assert str(archive) in str(info.value)


def test_archive_members_cannot_escape(tmp_path: Path, cache: Path) -> None:
    folder = _write(tmp_path / "good")
    evil = tmp_path / "evil" / "cifar-100-python.tar.gz"
    evil.parent.mkdir()
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("train", "test", "meta"):
            tar.add(folder / name, arcname=f"cifar-100-python/{name}")
        payload = b"owned"
        for bad in ("../../escaped.txt", "/tmp/abs_escaped.txt", "cifar-100-python/../x"):
            info = tarfile.TarInfo(bad)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = load_cifar100(evil, cache_dir=cache)
    assert data.train_images.shape[0] == N_TRAIN
    leaked = [p for p in tmp_path.rglob("*escaped*")] + [p for p in cache.rglob("x")]
    assert not leaked and not Path("/tmp/abs_escaped.txt").exists()


# --- errors: each names the file and the fix ---------------------------------------------------


def test_empty_folder_says_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(CifarNotFoundError) as info:
        load_cifar100(tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert str(tmp_path) in msg and "cifar-100-python.tar.gz" in msg and "download" in msg


def test_missing_test_file(folder_root: Path) -> None:
    test_file = folder_root / "cifar-100-python" / "test"
    test_file.unlink()
    with pytest.raises(CifarNotFoundError, match="missing CIFAR-100 file") as info:
        load_cifar100(folder_root)
    assert str(test_file) in str(info.value)


def test_incomplete_folder_next_to_the_archive_falls_back_to_it(
    tmp_path: Path, cache: Path
) -> None:
    archive = _write(tmp_path, as_archive=True)
    folder = _write(tmp_path)
    (folder / "test").unlink()
    data = load_cifar100(tmp_path, cache_dir=cache)
    assert str(archive.resolve()) in data.source and data.test_images.shape[0] == N_TEST


def test_truncated_pickle(folder_root: Path) -> None:
    train = folder_root / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    with pytest.raises(CifarDataError, match="truncated or corrupt") as info:
        load_cifar100(folder_root)
    assert str(train) in str(info.value)


def _corrupt(blob: bytes, how: str) -> bytes:
    if how == "truncated":
        return blob[: len(blob) // 2]
    if how == "flipped":  # bad bytes inside an archive of the right size and gzip header
        mid = len(blob) // 2
        return blob[:mid] + bytes(b ^ 0x5A for b in blob[mid : mid + 64]) + blob[mid + 64 :]
    return os.urandom(4096)


@pytest.mark.parametrize("how", ["garbage", "truncated", "flipped"])
def test_bad_archive_is_reported_as_corrupt(tmp_path: Path, cache: Path, how: str) -> None:
    archive = _write(tmp_path / "src", as_archive=True)
    archive.write_bytes(_corrupt(archive.read_bytes(), how))
    with pytest.raises(CifarDataError, match="is corrupt") as info:
        load_cifar100(archive, cache_dir=cache)
    msg = str(info.value)
    assert msg.startswith(str(archive)) and "delete it and download or copy it again" in msg
    assert "not the CIFAR-100" not in msg and str(cache) not in msg
    assert not cache.exists(), "a failed extraction must leave no (empty) cache folders behind"


def test_bad_file_inside_a_good_archive_blames_the_archive(tmp_path: Path, cache: Path) -> None:
    folder = _write(tmp_path / "good")
    (folder / "train").write_bytes(b"\x80\x02garbage that is no pickle")
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    for _ in range(2):  # the bad extraction is dropped, so the second run reports it again
        with pytest.raises(CifarDataError, match="is corrupt") as info:
            load_cifar100(archive, cache_dir=cache)
        msg = str(info.value)
        assert msg.startswith(str(archive)) and "delete it" in msg
        assert "not the CIFAR-100" not in msg and str(cache) not in msg
        assert "cannot unpickle cifar-100-python/train" in msg
        assert not any(p.is_dir() and not any(p.iterdir()) for p in cache.rglob("*"))
        assert not list(cache.rglob("train"))


def test_existing_cache_dir_is_kept_after_a_failure(tmp_path: Path, cache: Path) -> None:
    cache.mkdir()
    (cache / "other").write_text("someone else's")
    archive = _write(tmp_path / "src", as_archive=True)
    archive.write_bytes(_corrupt(archive.read_bytes(), "flipped"))
    with pytest.raises(CifarDataError, match="is corrupt"):
        load_cifar100(archive, cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == ["other"]


def test_archive_without_the_cifar_files(tmp_path: Path, cache: Path) -> None:
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("something/else")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(CifarDataError, match="cifar-100-python/train") as err:
        load_cifar100(tmp_path, cache_dir=cache)
    assert str(archive) in str(err.value) and "not the CIFAR-100 python version" in str(err.value)
    assert str(cache) not in str(err.value) and not cache.exists()


def _rewrite(path: Path, changes: dict) -> None:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d.update(changes)
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({b"data": np.zeros((N_TRAIN, 3000), np.uint8)}, "3072"),
        ({b"data": np.zeros((N_TRAIN, 3072), np.float32)}, "uint8"),
        ({b"fine_labels": [0] * (N_TRAIN - 1)}, "fine_labels"),
        ({b"fine_labels": [CLASSES] * N_TRAIN}, r"\[0, 10\)"),
    ],
    ids=["wrong-width", "wrong-dtype", "label-count", "label-range"],
)
def test_wrong_shapes_and_labels(folder_root: Path, changes: dict, match: str) -> None:
    train = folder_root / "cifar-100-python" / "train"
    _rewrite(train, changes)
    with pytest.raises(CifarDataError, match=match) as info:
        load_cifar100(folder_root)
    assert str(train) in str(info.value)


def test_missing_key_and_non_dict(folder_root: Path) -> None:
    meta = folder_root / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({b"coarse_label_names": [b"a"]}, protocol=2))
    with pytest.raises(CifarDataError, match="fine_label_names") as info:
        load_cifar100(folder_root)
    assert str(meta) in str(info.value)
    meta.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(CifarDataError, match="expected a dict"):
        load_cifar100(folder_root)


def test_pickle_with_code_is_refused(folder_root: Path) -> None:
    meta = folder_root / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({b"fine_label_names": os.getcwd}, protocol=2))  # a global
    with pytest.raises(CifarDataError, match="not allowed") as info:
        load_cifar100(folder_root)
    assert str(meta) in str(info.value)


# --- download ------------------------------------------------------------------------------------


def test_download_offline_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(CifarNotFoundError) as info:
        load_cifar100(tmp_path / "dl", download=True)
    msg = str(info.value)
    assert calls == [cifar_mod.CIFAR100_URL]
    assert "no network" in msg and str(tmp_path / "dl") in msg and "cifar-100-python.tar.gz" in msg


def test_download_is_skipped_when_present(folder_root: Path, monkeypatch: pytest.MonkeyPatch):
    import torchvision.datasets.utils as tv_utils

    def must_not_run(*args, **kwargs):
        raise AssertionError("downloaded although the files are there")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", must_not_run)
    assert load_cifar100(folder_root, download=True).train_images.shape[0] == N_TRAIN


def test_download_then_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    def fake(url, download_root, filename, md5):
        assert url == cifar_mod.CIFAR100_URL and md5 == cifar_mod.CIFAR100_MD5
        _write(Path(download_root))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake)
    assert load_cifar100(tmp_path / "new", download=True).test_images.shape[0] == N_TEST


# --- discovery and statistics --------------------------------------------------------------------


def test_find_cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty, folder = tmp_path / "empty", tmp_path / "folder"
    empty.mkdir()
    _write(folder)
    archive = _write(tmp_path / "arch", as_archive=True)
    assert find_cifar100([empty, tmp_path / "nope"]) is None
    assert find_cifar100([empty, folder, archive.parent]) == folder
    assert find_cifar100([archive.parent]) == archive.parent
    assert find_cifar100([archive]) == archive
    monkeypatch.setenv("CONDATTN_DATA", str(archive.parent))
    assert find_cifar100() == archive.parent


def test_missing_condattn_data_is_an_error_not_a_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "data")  # ./data holds CIFAR-100: the old fallback would have used it
    monkeypatch.chdir(tmp_path)
    assert find_cifar100() == Path("data").absolute()
    missing = tmp_path / "typo"
    monkeypatch.setenv("CONDATTN_DATA", str(missing))
    with pytest.raises(CifarNotFoundError, match="does not exist") as info:
        find_cifar100()
    assert str(missing) in str(info.value) and "CONDATTN_DATA" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CONDATTN_DATA", str(empty))
    assert find_cifar100() == empty  # set and existing: the only place, whatever it holds
    with pytest.raises(CifarNotFoundError, match="no CIFAR-100 data at") as info:
        load_cifar100(find_cifar100())
    assert str(empty) in str(info.value)


def test_root_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(CifarNotFoundError, match="does not exist") as info:
        load_cifar100(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(info.value)


def test_container_stats_are_the_train_split_s(folder_root: Path) -> None:
    data = load_cifar100(folder_root)
    mean, std = channel_stats(data.train_images)
    assert data.mean == tuple(round(m, 6) for m in mean)
    assert data.std == tuple(round(s, 6) for s in std)
    assert data.image_size == (32, 32) and data.num_classes == CLASSES
    sub = data.replace(train_images=data.train_images[:5], train_labels=data.train_labels[:5])
    assert sub.mean == data.mean  # a subset keeps the dataset's normalisation
    with pytest.raises(ValueError, match="uint8"):
        data.replace(test_images=data.test_images.float())


def test_channel_stats_matches_direct_computation() -> None:
    images = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=5)
    x = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean(1))
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.std(1, unbiased=False))
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(images.float())


@pytest.mark.slow
def test_real_cifar100(tmp_path: Path) -> None:
    root = find_cifar100()
    if root is None:
        pytest.skip("real CIFAR-100 not found (set CONDATTN_DATA)")
    data = load_cifar100(root, cache_dir=tmp_path)
    assert data.train_images.shape == (50000, 3, 32, 32)
    assert data.test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [500] * 100
    assert torch.bincount(data.test_labels).tolist() == [100] * 100
    assert data.classes[:2] == ["apple", "aquarium_fish"]
    mean, std = channel_stats(data.train_images)
    assert np.allclose(mean, CIFAR100_MEAN, atol=1e-5) and np.allclose(std, CIFAR100_STD, atol=1e-5)
    # Rounded to 6 decimals they ARE the constants, so normalisation is bit-identical to before.
    assert data.mean == CIFAR100_MEAN and data.std == CIFAR100_STD
