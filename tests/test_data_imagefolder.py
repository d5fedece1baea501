"""Tests for the image-folder loader and its decode cache, on tiny folders written here."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import condattn_log
from PIL import Image

from condattn.data import (
    DataError,
    DataNotFoundError,
    LoadOptions,
    channel_stats,
    decode_image,
    load_dataset,
    load_imagefolder,
    source_origin,
    split_files,
)
from condattn.data import imagefolder as imf

CLASSES = ("cat", "dog", "emu")
SIZE = 16


def _rgb(seed: int, w: int = 40, h: int = 36) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def _make_split(folder: Path, n: int, *, seed: int = 0, ext: str = ".png") -> None:
    for k, cls in enumerate(CLASSES):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _rgb(seed + 100 * k + i).save(folder / cls / f"img_{i:02d}{ext}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """3 classes x 6 train (PNG) and x 2 val (JPEG) images of 40 x 36 px."""
    root = tmp_path / "images"
    _make_split(root / "train", 6)
    _make_split(root / "val", 2, seed=50, ext=".jpg")
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _load(root: Path, cache: Path, **kwargs) -> object:
    opts = {"image_size": SIZE, "cache_dir": cache, "workers": 2}
    return load_imagefolder(root, **(opts | kwargs))


def test_container_fields(root: Path, cache: Path) -> None:
    data = _load(root, cache)
    assert data.classes == list(CLASSES)
    assert data.train_images.shape == (18, 3, SIZE, SIZE) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (6, 3, SIZE, SIZE)
    assert data.train_labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert data.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    mean, std = channel_stats(data.train_images)
    assert data.mean == tuple(round(m, 6) for m in mean)
    assert data.std == tuple(round(s, 6) for s in std)
    assert "decoded into" in data.source and str(root.resolve()) in data.source
    first = decode_image(root / "train" / "cat" / "img_00.png", size=SIZE)
    assert torch.equal(data.train_images[0], torch.from_numpy(first))
    via_registry = load_dataset(
        "imagefolder", LoadOptions(root=root, image_size=SIZE, cache_dir=cache)
    )
    assert torch.equal(via_registry.train_images, data.train_images)


@pytest.mark.parametrize("wh", [(40, 36), (36, 40), (16, 16), (70, 20)])
def test_decode_matches_torchvision_resize_and_centre_crop(tmp_path: Path, wh) -> None:
    from torchvision import transforms

    img = _rgb(7, *wh)
    img.save(tmp_path / "x.png")
    ref = transforms.Compose([transforms.Resize(SIZE), transforms.CenterCrop(SIZE)])(img)
    ours = decode_image(tmp_path / "x.png", size=SIZE)
    assert ours.shape == (3, SIZE, SIZE)
    assert np.array_equal(ours, np.asarray(ref).transpose(2, 0, 1))


def test_colour_modes_become_rgb(tmp_path: Path) -> None:
    grey = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    out = decode_image(tmp_path / "grey.png", size=SIZE)
    assert all(np.array_equal(out[c], grey) for c in range(3))

    rgba = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, : SIZE // 2, 3] = 255  # left half opaque, right half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = decode_image(tmp_path / "rgba.png", size=SIZE)
    assert (out[:, :, : SIZE // 2] == 200).all() and (out[:, :, SIZE // 2 :] == 0).all()

    pal = _rgb(3, SIZE, SIZE).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "pal.png")
    out = decode_image(tmp_path / "pal.png", size=SIZE)
    assert np.array_equal(out, np.asarray(pal.convert("RGB")).transpose(2, 0, 1))

    deep = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 250).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # a 16-bit grey PNG
    out = decode_image(tmp_path / "deep.png", size=SIZE)
    assert np.array_equal(out[1], (deep >> 8).astype(np.uint8))


def test_mixed_modes_load_together(root: Path, cache: Path) -> None:
    cat = root / "train" / "cat"
    Image.fromarray(np.full((30, 50), 9, np.uint8), mode="L").save(cat / "grey.png")
    Image.fromarray(np.full((30, 50, 4), 99, np.uint8), mode="RGBA").save(cat / "alpha.png")
    _rgb(5).convert("P").save(cat / "pal.gif.png")
    (cat / "notes.txt").write_text("not an image")  # ignored: not an image extension
    data = _load(root, cache)
    assert data.train_images.shape[0] == 21 and data.train_labels.tolist().count(0) == 9


# --- the cache -----------------------------------------------------------------------------------


def test_second_call_hits_the_cache(
    root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _load(root, cache)
    files = list((cache / "imagefolder").glob("*.pt"))
    assert len(files) == 1 and files[0].name.startswith("images-")

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(imf, "decode_image", no_decode)
    second = _load(root, cache)
    assert "cached in" in second.source
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert (second.mean, second.std, second.classes) == (first.mean, first.std, first.classes)
    # compare names the folder, not the cache: fresh and cached loads have one origin
    origin = f"imagefolder {root.resolve()} at {SIZE}px"
    assert source_origin(first.source) == source_origin(second.source) == origin


def test_a_changed_file_invalidates_the_cache(
    root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _load(root, cache)
    target = root / "train" / "dog" / "img_03.png"
    _rgb(999).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    real = imf.decode_image
    monkeypatch.setattr(imf, "decode_image", lambda p, size: calls.append(p) or real(p, size=size))
    second = _load(root, cache)
    assert len(calls) == 24 and "decoded into" in second.source
    assert torch.equal(second.train_images[9], torch.from_numpy(real(target, size=SIZE)))
    assert not torch.equal(first.train_images[9], second.train_images[9])
    assert len(list((cache / "imagefolder").glob("*.pt"))) == 1  # the stale cache is gone
    calls.clear()
    _load(root, cache, image_size=SIZE // 2)  # another size is another cache, kept beside
    assert len(calls) == 24 and len(list((cache / "imagefolder").glob("*.pt"))) == 2


def test_unwritable_cache_still_loads(root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    lines = []
    with condattn_log(lines.append):
        data = _load(root, blocker)
    assert data.train_images.shape[0] == 18 and "not cached" in data.source
    assert any("could not write the decode cache" in line for line in lines)


def test_progress_lines_without_a_terminal(root: Path, cache: Path) -> None:
    lines = []
    with condattn_log(lines.append):
        _load(root, cache, progress=False)
    assert any(line.endswith("24/24 images") for line in lines)


# --- the held-out split --------------------------------------------------------------------------


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """Class folders only (no train/ or val/): 3 classes x 10 images."""
    root = tmp_path / "flat"
    _make_split(root, 10)
    return root


def test_val_fraction_split_is_stratified_and_reproducible(flat: Path, tmp_path: Path) -> None:
    a = _load(flat, tmp_path / "c1", val_fraction=0.3)
    b = _load(flat, tmp_path / "c2", val_fraction=0.3)
    assert torch.bincount(a.test_labels).tolist() == [3, 3, 3]
    assert torch.bincount(a.train_labels).tolist() == [7, 7, 7]
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.train_images, b.train_images)
    c = _load(flat, tmp_path / "c3", val_fraction=0.3, split_seed=1)
    assert not torch.equal(a.test_images, c.test_images)
    # every image lands in exactly one split
    pairs = {x.numpy().tobytes() for x in torch.cat([a.train_images, a.test_images])}
    assert len(pairs) == 30


def test_split_ignores_listing_order() -> None:
    files = {cls: [f"{cls}_{i}.png" for i in range(9)] for cls in CLASSES}
    shuffled = {cls: random.Random(1).sample(names, len(names)) for cls, names in files.items()}
    assert split_files(files, fraction=0.25, seed=4) == split_files(shuffled, fraction=0.25, seed=4)
    train, val = split_files(files, fraction=0.25, seed=4)
    for cls in CLASSES:
        assert len(val[cls]) == 2 and sorted(train[cls] + val[cls]) == sorted(files[cls])
    assert split_files(files, fraction=0.25, seed=5) != (train, val)
    with pytest.raises(DataError, match="at least 2"):
        split_files({"a": ["x.png"]}, fraction=0.5, seed=0)


def test_train_folder_without_val_splits_train(root: Path, cache: Path) -> None:
    for p in (root / "val").rglob("*.jpg"):
        p.unlink()
    for d in (root / "val").iterdir():
        d.rmdir()
    (root / "val").rmdir()
    data = _load(root, cache, val_fraction=0.5)
    assert torch.bincount(data.test_labels).tolist() == [3, 3, 3]


def test_val_folder_and_val_fraction_give_train_val_test(root: Path, cache: Path) -> None:
    """val/ stays the test split; the val split is held out of train/, as on CIFAR."""
    plain = _load(root, cache)
    data = _load(root, cache, val_fraction=0.5, split_seed=2)
    assert torch.equal(data.test_images, plain.test_images)
    assert torch.bincount(data.val_labels).tolist() == [3, 3, 3]
    assert torch.bincount(data.train_labels).tolist() == [3, 3, 3]
    both = torch.cat([data.train_images, data.val_images])
    assert {x.numpy().tobytes() for x in both} == {x.numpy().tobytes() for x in plain.train_images}
    again = _load(root, cache, val_fraction=0.5, split_seed=2)
    assert torch.equal(again.val_images, data.val_images)


# --- errors --------------------------------------------------------------------------------------


def test_folder_without_class_subfolders(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "loose"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    _rgb(0).save(root / "train" / "a.png")
    with pytest.raises(DataError, match="no class subfolders") as info:
        _load(root, cache)
    assert str(root / "train") in str(info.value)
    assert not cache.exists()


def test_empty_class_folder(root: Path, cache: Path) -> None:
    (root / "train" / "fox").mkdir()
    (root / "val" / "fox").mkdir()
    _rgb(0).save(root / "val" / "fox" / "a.png")
    with pytest.raises(DataError, match="without images") as info:
        _load(root, cache)
    assert str(root / "train" / "fox") in str(info.value)


def test_val_classes_differ_from_train(root: Path, cache: Path) -> None:
    (root / "val" / "yak").mkdir()
    _rgb(0).save(root / "val" / "yak" / "a.png")
    with pytest.raises(DataError, match="different classes") as info:
        _load(root, cache)
    msg = str(info.value)
    assert str(root / "train") in msg and str(root / "val") in msg and "'yak'" in msg


def test_corrupt_image_is_named_or_skipped_and_counted(
    root: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = root / "train" / "emu" / "img_02.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    with pytest.raises(DataError, match="cannot decode image") as info:
        _load(root, cache)
    msg = str(info.value)
    assert str(bad) in msg and "skip_bad_images" in msg and "\n" not in msg
    assert not cache.exists(), "a failed decoding must leave no cache folder behind"
    with caplog.at_level(logging.INFO, logger="condattn.data.imagefolder"):
        data = _load(root, cache, skip_bad_images=True)
    assert data.train_images.shape[0] == 17
    kept = data.train_images.shape[0] + data.test_images.shape[0]  # the log counts what is kept
    assert f"decoded {kept} of {kept + 1} images (1 unreadable, skipped) of {root}" in caplog.text
    assert torch.bincount(data.train_labels).tolist() == [6, 6, 5]
    assert "skipped 1 unreadable" in data.source and str(bad) in data.source


def test_every_image_of_a_class_bad_is_an_error(root: Path, cache: Path) -> None:
    for p in (root / "val" / "dog").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable image left") as info:
        _load(root, cache, skip_bad_images=True)
    assert str(root / "val" / "dog") in str(info.value)


def test_layout_errors(root: Path, flat: Path, tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        _load(tmp_path / "nothing", cache)
    with pytest.raises(DataError, match="no val/ folder") as info:
        _load(flat, cache)
    assert "val_fraction" in str(info.value)
    with pytest.raises(ValueError, match="image_size"):
        _load(root, cache, image_size=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        _load(flat, cache, val_fraction=1.0)
