"""The [data] config fields and their wiring: load_data, build_augment, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import condattn_log
from PIL import Image

from condattn.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    BatchAugment,
    BatchRandomResizedCrop,
    DataNotFoundError,
    ImageData,
    list_datasets,
    write_synthetic_cifar10,
)
from condattn.train.build import augment_kind, build_augment, load_data
from condattn.train.config import CHOICES, ConfigError
from condattn.train.recipe import config_from_dict, config_to_toml

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib


def _cfg(**data):
    return config_from_dict({"data": data})


def _cifar_like(n: int = 16) -> ImageData:
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(n) % 4
    return ImageData(x, y, x, y, list("abcd"), "test", mean=CIFAR100_MEAN, std=CIFAR100_STD)


def test_choices_match_the_registry() -> None:
    assert sorted(CHOICES[("data", "dataset")]) == list_datasets()


def test_defaults_keep_the_cifar100_pipeline_bit_identical() -> None:
    cfg, data = _cfg(), _cifar_like()
    d = cfg.data
    assert (d.dataset, d.augment, d.normalize, d.image_size) == ("cifar100", "auto", "mean_std", 0)
    x = data.train_images
    for train in (True, False):
        ours = build_augment(cfg, train=train, data=data)
        old = BatchAugment() if train else BatchAugment.eval_transform()  # the old constants
        assert type(ours) is BatchAugment
        a = ours(x, generator=torch.Generator().manual_seed(3))
        b = old(x, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b), train
    assert build_augment(cfg, train=True).mean == CIFAR100_MEAN  # data=None: the old default


def test_the_dataset_stats_and_mean_only_normalisation() -> None:
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(6) % 2
    data = ImageData(x, y, x, y, ["a", "b"], "test")
    aug = build_augment(_cfg(), train=False, data=data)
    assert (aug.mean, aug.std) == (data.mean, data.std) and data.mean != CIFAR100_MEAN
    mean_only = build_augment(_cfg(normalize="mean"), train=False, data=data)
    ref = x.float() / 255 - torch.tensor(data.mean).view(1, 3, 1, 1)
    assert torch.allclose(mean_only(x), ref, atol=1e-6)


def test_augment_choice_by_size() -> None:
    assert augment_kind("auto", (32, 32)) == "paper" and augment_kind("auto", (64, 64)) == "rrc"
    assert augment_kind("paper", (224, 224)) == "paper" and augment_kind("rrc", (32, 32)) == "rrc"
    x = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    data = ImageData(x, torch.arange(4) % 2, x, torch.arange(4) % 2, ["a", "b"], "t")
    rrc = build_augment(_cfg(rrc_scale=[0.3, 0.9], flip=False), train=True, data=data)
    assert isinstance(rrc, BatchRandomResizedCrop)
    assert (rrc.size, rrc.scale, rrc.flip) == ((48, 48), (0.3, 0.9), False)
    paper = build_augment(_cfg(augment="paper"), train=True, data=data)
    assert isinstance(paper, BatchAugment) and paper.rotate
    assert build_augment(_cfg(augment="rrc"), train=True, data=_cifar_like()).size == (32, 32)


def test_load_data_by_dataset_name(tmp_path: Path) -> None:
    write_synthetic_cifar10(tmp_path / "c10", n_train=40, n_test=10)
    data = load_data(_cfg(dataset="cifar10", root=str(tmp_path / "c10"), train_subset=20))
    assert data.num_classes == 10 and data.train_images.shape[0] == 20
    full = load_data(_cfg(dataset="cifar10"), root=str(tmp_path / "c10"))
    assert data.mean == full.mean  # a subset keeps the full train split's statistics
    assert "subset: 20 train" in data.source
    synth = load_data(_cfg(synthetic_train=30, synthetic_test=10), synthetic=True)
    assert synth.train_images.shape[0] == 30 and synth.source.startswith("synthetic")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_data(_cfg(dataset="cifar10"), root=str(tmp_path / "typo"))


def test_load_data_image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONDATTN_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    cfg = _cfg(dataset="imagefolder", image_size=40, val_fraction=0.25, decode_workers=1)
    lines = []
    with condattn_log(lines.append):
        data = load_data(cfg, root=str(tmp_path / "imgs"))
    assert data.train_images.shape == (6, 3, 40, 40) and data.test_images.shape == (2, 3, 40, 40)
    assert lines and str(tmp_path / "cache") in data.source
    assert isinstance(build_augment(cfg, train=True, data=data), BatchRandomResizedCrop)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"dataset": "imagenet"}, "choose one of"),
        ({"augment": "randaugment"}, "choose one of"),
        ({"normalize": "std"}, "choose one of"),
        ({"dataset": "imagefolder"}, "needs data.image_size"),
        ({"image_size": 64}, "32 px"),
        ({"dataset": "imagefolder", "image_size": 64, "val_fraction": 1.0}, r"\[0, 1\)"),
        ({"rrc_scale": [0.5]}, "rrc_scale"),
        ({"rrc_scale": [0.5, 1.5]}, "rrc_scale"),
        ({"decode_workers": -1}, ">= 0"),
    ],
)
def test_config_checks(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _cfg(**data)


def test_new_fields_round_trip_through_toml() -> None:
    cfg = _cfg(
        dataset="imagefolder",
        image_size=64,
        val_fraction=0.1,
        split_seed=3,
        skip_bad_images=True,
        decode_workers=2,
        augment="rrc",
        rrc_scale=[0.25, 1.0],
        normalize="mean",
    )
    again = config_from_dict(tomllib.loads(config_to_toml(cfg)))
    assert again.data == cfg.data
