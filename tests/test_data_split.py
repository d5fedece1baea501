"""The val split held out of the train images (data.val_fraction), the model selection on it, and
the refusal of dataset options that do not apply (issue 24, item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from condattn.data import LoadOptions, load_dataset, write_synthetic_cifar100
from condattn.data.split import holdout_indices, split_validation
from condattn.train.build import build_augment, load_data
from condattn.train.config import ConfigError
from condattn.train.recipe import config_from_dict, load_recipe
from condattn.train.rundir import results_message, val_chosen

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST, CLASSES = 200, 40, 10  # 20 train images per class


def _pairs(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, bytes]]:
    return sorted((int(y), x.numpy().tobytes()) for x, y in zip(images, labels, strict=True))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar100(root, n_train=N_TRAIN, n_test=N_TEST, num_classes=CLASSES, seed=3)
    return root


def _load(root: Path, **opts) -> object:
    return load_dataset("cifar100", LoadOptions(root=root, **opts))


def test_cifar_val_split_is_stratified_disjoint_and_leaves_test_alone(cifar: Path) -> None:
    plain = _load(cifar)
    data = _load(cifar, val_fraction=0.25)
    assert not plain.has_val and data.has_val
    assert torch.bincount(data.val_labels).tolist() == [5] * CLASSES  # round(0.25 * 20)
    assert torch.bincount(data.train_labels).tolist() == [15] * CLASSES
    assert torch.equal(data.test_images, plain.test_images)
    together = _pairs(
        torch.cat([data.train_images, data.val_images]),
        torch.cat([data.train_labels, data.val_labels]),
    )
    assert together == _pairs(plain.train_images, plain.train_labels)  # each image once
    # normalised with the statistics of the images trained on, not of the held-out ones
    assert data.mean != plain.mean and "val: 0.25" in data.source
    assert "val=(50, 3, 32, 32)" in repr(data)


def test_split_is_fixed_by_split_seed_and_content_not_file_order(
    cifar: Path, tmp_path: Path
) -> None:
    a, b = _load(cifar, val_fraction=0.25), _load(cifar, val_fraction=0.25)
    assert torch.equal(a.val_images, b.val_images) and torch.equal(a.train_images, b.train_images)
    other = _load(cifar, val_fraction=0.25, split_seed=1)
    assert _pairs(other.val_images, other.val_labels) != _pairs(a.val_images, a.val_labels)
    shuffled = tmp_path / "shuffled"  # the same images in another in-file order
    write_synthetic_cifar100(
        shuffled, n_train=N_TRAIN, n_test=N_TEST, num_classes=CLASSES, seed=3, shuffle=True
    )
    s = _load(shuffled, val_fraction=0.25)
    assert _pairs(s.val_images, s.val_labels) == _pairs(a.val_images, a.val_labels)


def test_holdout_keeps_at_least_one_per_side_and_refuses_bad_input() -> None:
    x = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    y = torch.tensor([0, 0, 1, 1])
    keep, held = holdout_indices(x, y, fraction=0.01, seed=0)
    assert len(held) == 2 and len(keep) == 2  # at least one per class held out
    keep, held = holdout_indices(x, y, fraction=0.99, seed=0)
    assert len(keep) == 2  # at least one per class kept
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        holdout_indices(x, y, fraction=0.0, seed=0)
    with pytest.raises(ValueError, match="at least 2 per class"):
        holdout_indices(x[:3], torch.tensor([0, 0, 1]), fraction=0.5, seed=0)


def test_only_one_val_split(cifar: Path) -> None:
    data = _load(cifar, val_fraction=0.25)
    with pytest.raises(ValueError, match="already has a val split"):
        split_validation(data, fraction=0.1, seed=0)


def _cfg(**data) -> object:
    return config_from_dict({"data": data, "model": {"variant": "se"}})


def test_load_data_split_is_the_same_for_every_seed_and_variant_and_not_subset(
    cifar: Path,
) -> None:
    base = {"val_fraction": 0.25, "train_subset": 60}
    a = load_data(config_from_dict({"data": base}), root=str(cifar))
    b = load_data(
        config_from_dict({"data": base, "system": {"seed": 7}, "model": {"variant": "se"}}),
        root=str(cifar),
    )
    assert torch.equal(a.val_images, b.val_images) and torch.equal(a.train_images, b.train_images)
    assert a.train_images.shape[0] == 60 and a.val_images.shape[0] == 50  # val is never subset
    full = load_data(config_from_dict({"data": {"val_fraction": 0.25}}), root=str(cifar))
    assert torch.equal(full.val_images, a.val_images)  # held out before the train subset
    synthetic = load_data(_cfg(val_fraction=0.5, synthetic_train=200), synthetic=True)
    assert synthetic.has_val and synthetic.val_images.shape[0] == 100


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"skip_bad_images": True}, "data.skip_bad_images=True does not apply to the 'cifar100'"),
        ({"workers": 2}, "data.decode_workers=2 does not apply"),
        ({"split_seed": 3}, "data.split_seed=3 has no effect without a held-out split"),
        ({"val_fraction": -0.1}, r"\[0, 1\)"),
    ],
)
def test_cifar_refuses_options_that_do_not_apply(cifar: Path, opts: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        _load(cifar, **opts)
    assert "\n" not in str(info.value)


def test_other_loaders_refuse_options_that_do_not_apply(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="download=True does not apply to the 'imagefolder'"):
        load_dataset("imagefolder", LoadOptions(root=tmp_path, download=True, image_size=8))
    with pytest.raises(ValueError, match=r"data.root=.* does not apply to the 'synthetic'"):
        load_dataset("synthetic", LoadOptions(root=tmp_path))
    with pytest.raises(ValueError, match="remove --data"):
        load_data(_cfg(), root=str(tmp_path), synthetic=True)
    # --synthetic stands in for an image-folder recipe: its file options are dropped
    folder_recipe = _cfg(
        dataset="imagefolder", image_size=64, skip_bad_images=True, decode_workers=2
    )
    assert load_data(folder_recipe, synthetic=True).image_size == (32, 32)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"augment": "paper", "rrc_scale": [0.3, 1.0]}, r"data.rrc_scale=.* applies to 'rrc'"),
        ({"augment": "rrc", "crop": False}, "data.crop=False applies to 'paper' augmentation"),
        ({"augment": "rrc", "max_angle": 10.0}, "data.max_angle=10.0 applies"),
    ],
)
def test_augment_options_the_run_would_not_use_are_refused(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_augment(_cfg(**data), train=True)


def test_val_chosen_picks_the_earliest_best_val_epoch_and_reports_its_test() -> None:
    rows = [
        {"epoch": 1, "val_top1": 10.0, "test_top1": 11.0, "test_top5": 30.0},
        {"epoch": 2, "val_top1": 20.0, "test_top1": 15.0, "test_top5": 40.0},
        {"epoch": 3, "val_top1": 20.0, "test_top1": 25.0, "test_top5": 50.0},
    ]
    chosen = val_chosen(rows)
    assert (chosen["epoch"], chosen["top1"], chosen["val_top1"]) == (2, 15.0, 20.0)
    assert val_chosen([{"epoch": 1, "test_top1": 50.0, "test_top5": 60.0}]) is None


def test_a_run_with_a_val_split_selects_on_val_and_reports_final_and_val_chosen(
    tmp_path: Path,
) -> None:
    from condattn.train.loop import train

    cfg = load_recipe(
        REPO / "recipes" / "quick.toml",
        [
            "model.variant=se",
            "model.widths=[8,8,16,16]",
            "data.synthetic_train=400",
            "data.synthetic_test=50",
            "data.val_fraction=0.25",
            "data.split_seed=1",
            "optim.batch_size=100",
            "optim.epochs=2",
            "optim.milestones=[]",
            "system.threads=1",
            "system.progress=off",
        ],
    )
    data = load_data(cfg, synthetic=True)
    res = train(cfg, data=data, run_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all({"val_top1", "val_top5", "val_loss"} <= set(r) for r in rows)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["val_chosen"] == res["val_chosen"] == val_chosen(rows)
    assert res["final"]["top1"] == rows[-1]["test_top1"]
    assert res["final"]["val_top1"] == rows[-1]["val_top1"]
    assert (res["num_train"], res["num_val"], res["num_test"]) == (300, 100, 50)  # 1 of 4 per class
    assert "best" not in res  # an epoch chosen on the test set is never reported
    line = results_message(res, tmp_path / "run")
    assert f"at the epoch chosen on val ({res['val_chosen']['epoch']}, val top1" in line


def test_report_and_summary_show_the_val_chosen_epoch_never_a_test_chosen_one(
    tmp_path: Path,
) -> None:
    from condattn.cli.report import report_table
    from condattn.experiments.summary import _chosen_mean

    common = {"name": "r", "arch": "a", "variant": "se_r", "aux_weights": [], "epochs": 3}
    common |= {"paper": {"top1": None}, "delta_vs_paper": None}
    new = {
        **common,
        "final": {"top1": 50.0, "top5": 80.0},
        "val_chosen": {"top1": 49.5, "epoch": 2},
    }
    old = {**common, "final": {"top1": 50.0, "top5": 80.0}, "best": {"top1": 51.0, "epoch": 2}}
    for name, res in (("new", new), ("old", old)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    table, _ = report_table([tmp_path / "new", tmp_path / "old"])
    assert "| 49.50 (2) |" in table and "51.00" not in table  # an old test-chosen best: "-"
    assert _chosen_mean([{"val_chosen_top1": 1.0}, {"val_chosen_top1": 3.0}]) == 2.0
    assert _chosen_mean([{"val_chosen_top1": 1.0}, {"val_chosen_top1": None}]) is None
