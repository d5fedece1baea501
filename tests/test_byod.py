"""Issue 10, "bring your own network and data": acceptance tests through the CLI.

Every test writes its own tiny data (PNG image folders, synthetic sets) under ``tmp_path`` and
its own decode cache (``$CONDATTN_CACHE``); nothing here reads the real CIFAR-100.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import condattn_log
from PIL import Image

from condattn.cli import main
from condattn.data import CIFAR100_MEAN, BatchRandomResizedCrop, synthetic_cifar100
from condattn.data.synthetic import make_synthetic_arrays
from condattn.experiments.grid import config_diff
from condattn.train import loop, progress
from condattn.train.build import build_augment, load_data
from condattn.train.checkpoint import load_checkpoint, save_checkpoint
from condattn.train.config import TrainConfig
from condattn.train.recipe import config_from_dict

pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "recipes" / "base.toml"
CLASSES = tuple(f"class_{k:02d}" for k in range(10))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Image-folder decodings go to this test's folder, never to ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONDATTN_CACHE", str(cache))
    return cache


# --- data written by the tests ------------------------------------------------------------------


def _write_split(folder: Path, *, per_class: int, split: str, px: int) -> None:
    """``per_class`` PNG images per class: the synthetic CIFAR look (a colour and an oriented
    stripe pattern per class, noise per image), resized to ``px`` so the decoder has work."""
    images, labels = make_synthetic_arrays(
        n=per_class * len(CLASSES), num_classes=len(CLASSES), seed=3, split=split
    )
    for i, (img, label) in enumerate(zip(images, labels)):
        cls = folder / CLASSES[int(label)]
        cls.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), mode="RGB")
        pil.resize((px, px), Image.BILINEAR).save(cls / f"img_{i:03d}.png")


def _image_folder(root: Path, *, n_train: int = 12, n_val: int = 3, px: int = 36) -> Path:
    """``root/train/<class>/`` and ``root/val/<class>/`` for 10 classes."""
    _write_split(root / "train", per_class=n_train, split="train", px=px)
    _write_split(root / "val", per_class=n_val, split="test", px=px)
    return root


def _recipe(path: Path, *, model: str, data: str, optim: str = "") -> Path:
    """A recipe on top of the paper's base recipe, as a user would write it."""
    path.write_text(
        f'base = "{BASE.as_posix()}"\nname = "byod"\n\n[model]\n{model}\n\n[data]\n{data}\n\n'
        f'[optim]\n{optim}\n\n[system]\nthreads = 1\nprogress = "off"\n'
    )
    return path


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *names: str) -> str:
    """Runs the CLI, expects a non-zero exit and ONE stderr line naming every ``names``."""
    assert main(argv) != 0, f"condattn {' '.join(argv)} should have failed"
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, f"not one line:\n{err}"
    assert "Traceback" not in err
    for name in names:
        assert name in err, f"{name!r} not in the error: {err}"
    return err


# --- follow-ups: the dataset's own statistics, resume of older runs, profile -----------------


def _imagefolder_cfg(root: Path, *, image_size: int, **data: object) -> TrainConfig:
    return config_from_dict(
        {
            "model": {"arch": "se_resnet18", "variant": "se", "widths": [8, 16, 32, 64]},
            "optim": {"epochs": 1, "batch_size": 20, "milestones": [], "warmup_epochs": 0},
            "data": {"dataset": "imagefolder", "root": str(root), "image_size": image_size, **data},
            "system": {"threads": 1, "progress": "off"},
        }
    )


def test_an_image_folder_run_normalises_with_its_own_stats_and_crops_rrc_above_32px(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _image_folder(tmp_path / "images", n_train=2, n_val=1, px=48)
    cfg = _imagefolder_cfg(root, image_size=40)
    data = load_data(cfg)
    assert data.image_size == (40, 40) and data.mean != CIFAR100_MEAN
    made = []

    def spy(cfg, *, train, **kwargs):
        aug = build_augment(cfg, train=train, **kwargs)
        made.append((train, aug))
        return aug

    monkeypatch.setattr(loop, "build_augment", spy)
    loop.train(cfg, data=data, run_dir=tmp_path / "run")
    augs = dict(made)
    assert isinstance(augs[True], BatchRandomResizedCrop) and augs[True].size == (40, 40)
    for aug in augs.values():
        assert aug.mean == data.mean and aug.std == data.std
    # data.normalize = "mean": the paper's mean subtraction, still with the folder's own mean
    mean_only = build_augment(
        _imagefolder_cfg(root, image_size=40, normalize="mean"), train=False, data=data
    )
    assert mean_only.mean == data.mean and mean_only.std == (1.0, 1.0, 1.0)


def _tiny_cfg(**optim: object) -> TrainConfig:
    return config_from_dict(
        {
            "model": {"arch": "se_resnet18", "variant": "se_r", "widths": [8, 16, 32, 64]},
            "loss": {"aux_weights": [0.3, 0.3]},
            "optim": {"epochs": 1, "batch_size": 32, "milestones": [], **optim},
            "system": {"threads": 1, "progress": "off"},
        }
    )


def _strip(saved: dict, keys: list[tuple[str, str]]) -> dict:
    """A config dict as an older condattn saved it: without the fields added since."""
    saved = json.loads(json.dumps(saved))
    for section, key in keys:
        del saved[section][key]
    return saved


# Fields that did not exist when the first runs were saved (issue 10 added them).
NEW_FIELDS = [
    ("model", "kwargs"),
    *(("data", k) for k in ("dataset", "image_size", "val_fraction", "augment", "normalize")),
]


def test_resume_takes_missing_keys_of_an_older_checkpoint_as_defaults(tmp_path: Path) -> None:
    data = synthetic_cifar100(n_train=64, n_test=32)
    run = tmp_path / "run"
    loop.train(_tiny_cfg(), data=data, run_dir=run)
    state = load_checkpoint(run / "checkpoint.pt")
    state["config"] = _strip(state["config"], NEW_FIELDS)
    save_checkpoint(
        run / "checkpoint.pt", {k: v for k, v in state.items() if k != "format_version"}
    )
    loop.train(_tiny_cfg(epochs=2), data=data, run_dir=run, resume=True)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # it went on
    # a missing key whose default differs from the run's value is still a difference
    with pytest.raises(ValueError, match=r"data\.augment: checkpoint 'auto' != now 'rrc'"):
        loop._check_resumable(
            config_from_dict({**_tiny_cfg().to_dict(), "data": {"augment": "rrc"}}),
            _strip(_tiny_cfg().to_dict(), NEW_FIELDS),
        )
    with pytest.raises(ValueError, match=r"optim\.lr: checkpoint 0\.1 != now 0\.05"):
        loop._check_resumable(_tiny_cfg(lr=0.05), _strip(_tiny_cfg().to_dict(), NEW_FIELDS))


def test_compare_reuses_runs_saved_before_the_new_fields() -> None:
    asked = _tiny_cfg().to_dict()
    assert config_diff(asked, _strip(asked, NEW_FIELDS)) == []
    other = json.loads(json.dumps(asked))
    other["data"]["augment"] = "rrc"
    assert config_diff(other, _strip(asked, NEW_FIELDS)) == [
        "data.augment: run has 'auto', grid asks 'rrc'"
    ]


@pytest.mark.parametrize(
    ("name", "extra"),
    [("torchvision:mobilenet_v3_small", []), ("timm:seresnet18", ["--image-size", "64"])],
)
def test_profile_takes_external_names(capsys, name: str, extra: list[str]) -> None:
    assert main(["profile", name, "--variant", "se_r", *extra]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name} variant=se_r: params") and " r=" not in out
    size = extra[-1] if extra else "32"
    assert f"input 1x3x{size}x{size}" in out
    # the zoo's r does not apply to them: one line naming the keys to use instead
    _one_line_error(capsys, ["profile", name, "--r", "4"], "model.r", "[model.kwargs]")


# --- issue 10 item 4: never silent -------------------------------------------------------------


def test_a_run_without_a_terminal_logs_progress_lines_during_the_epoch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = synthetic_cifar100(n_train=128, n_test=32)
    lines: list[str] = []
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # a line after every step
    with condattn_log(lines.append):
        loop.train(_tiny_cfg(), data=data, run_dir=tmp_path / "a")
    beats = [m for m in lines if re.fullmatch(r"epoch 1/1 step \d/4 \| \d+ img/s \| loss .*", m)]
    assert [int(m.split("step ")[1][0]) for m in beats] == [1, 2, 3, 4], lines
    assert all(float(m.split("loss ")[1].split()[0]) > 0 for m in beats)
    lines.clear()
    monkeypatch.setattr(progress, "LOG_EVERY_S", 1e9)  # never due: only the epoch summaries
    with condattn_log(lines.append):
        loop.train(_tiny_cfg(), data=data, run_dir=tmp_path / "b")
    assert not [m for m in lines if " step " in m] and any(m.startswith("epoch 1/1") for m in lines)


# --- issue 10 acceptance: your own data and network, through the CLI --------------------------

TIMM_MODEL = (
    'arch = "timm:seresnet18"\nvariant = "se_r"\naux_at = "auto"\n'
    "kwargs = {channels = [8, 16, 32, 64]}"  # a narrow SE-ResNet18: timm's own option
)
# A tiny set learns fast at a high constant lr; no warm-up, so epoch 1 already trains.
FAST = "epochs = 3\nbatch_size = 24\nlr = 0.05\nwarmup_epochs = 0\nmilestones = []"


def _train_losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_timm_se_r_trains_on_an_image_folder(tmp_path: Path, capsys) -> None:
    root = _image_folder(tmp_path / "images")
    data = f'dataset = "imagefolder"\nroot = "{root.as_posix()}"\nimage_size = 32'
    recipe = _recipe(tmp_path / "my.toml", model=TIMM_MODEL, data=data, optim=FAST)
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"imagefolder {root.resolve()} at 32px decoded into" in printed.out
    res = json.loads((out / "results.json").read_text())
    assert (res["num_train"], res["num_test"]) == (120, 30)  # 10 classes x 12 train, x 3 val
    assert res["arch"] == "timm:seresnet18" and res["variant"] == "se_r"
    losses = _train_losses(out)
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0], losses
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["aux_at"] == ["auto"] and len(config["loss"]["aux_weights"]) == 2
    # eval rebuilds the model from the checkpoint and normalises with the folder's own stats
    assert main(["eval", str(out / "checkpoint.pt")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert evaluated["n"] == 30
    assert evaluated["test_loss"] == pytest.approx(last["test_loss"], rel=1e-4)


def test_torchvision_backbone_trains_on_an_image_folder_at_64px(tmp_path: Path, capsys) -> None:
    root = _image_folder(tmp_path / "images", px=72)
    model = 'arch = "torchvision:mobilenet_v3_small"\nvariant = "se_r"\naux_at = "auto"'
    data = f'dataset = "imagefolder"\nroot = "{root.as_posix()}"\nimage_size = 64'
    recipe = _recipe(tmp_path / "my.toml", model=model, data=data, optim=FAST)
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out)]) == 0
    assert "at 64px" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert (res["num_train"], res["num_test"]) == (120, 30)
    assert res["arch"] == "torchvision:mobilenet_v3_small" and res["variant"] == "se_r"
    losses = _train_losses(out)
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0], losses
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["aux_losses"]) == 2 for r in rows)  # "auto" placed the paper's two heads


# --- issue 10 acceptance: each mistake is one line naming it and the valid choices -----------


def _train_argv(tmp_path: Path, *, model: str = TIMM_MODEL, root: Path | None = None) -> list[str]:
    data = 'dataset = "imagefolder"\nimage_size = 32'
    if root is not None:
        data += f'\nroot = "{root.as_posix()}"'
    recipe = _recipe(tmp_path / "my.toml", model=model, data=data, optim=FAST)
    return ["train", str(recipe), "--out", str(tmp_path / "run")]


@pytest.mark.parametrize(
    ("arch", "names"),
    [
        ("timm:seresnet181", ["unknown timm model 'seresnet181'", "timm:seresnet18,"]),
        ("torchvision:resnt18", ["unknown torchvision model 'resnt18'", "torchvision:resnet18,"]),
    ],
)
def test_an_unknown_model_name(tmp_path: Path, capsys, arch: str, names: list[str]) -> None:
    model = f'arch = "{arch}"\nvariant = "se_r"\naux_at = "auto"'
    argv = _train_argv(tmp_path, model=model, root=_image_folder(tmp_path / "images", n_train=2))
    _one_line_error(capsys, argv, "model.arch", *names)


def test_a_folder_without_class_subfolders(tmp_path: Path, capsys) -> None:
    root = tmp_path / "images"
    for split in ("train", "val"):  # images straight in train/ and val/, no class folders
        (root / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / split / "a.png")
    err = _one_line_error(capsys, _train_argv(tmp_path, root=root), "no class subfolders")
    assert "<class>/<image>" in err and str(root / "train") in err


def test_a_corrupt_image(tmp_path: Path, capsys) -> None:
    root = _image_folder(tmp_path / "images", n_train=2, n_val=1)
    bad = root / "train" / CLASSES[0] / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    _one_line_error(capsys, _train_argv(tmp_path, root=root), str(bad), "data.skip_bad_images")


def test_val_classes_that_differ_from_train(tmp_path: Path, capsys) -> None:
    root = _image_folder(tmp_path / "images", n_train=2, n_val=1)
    (root / "val" / CLASSES[-1]).rename(root / "val" / "class_xx")
    _one_line_error(
        capsys,
        _train_argv(tmp_path, root=root),
        "different classes",
        f"only in train: ['{CLASSES[-1]}']",
        "only in val: ['class_xx']",
    )


@pytest.mark.parametrize(
    ("flag", "value", "names"),
    [
        ("--variants", "se,se_rr", ["--variants", "'se_rr'", "se, se_a, se_r"]),
        ("--seeds", "0,one", ["--seeds", "integers", "'0,one'"]),
        ("--seeds", "0.5", ["--seeds", "integers", "'0.5'"]),
    ],
)
def test_compare_flag_typos(tmp_path: Path, capsys, flag: str, value: str, names: list) -> None:
    recipe = _recipe(tmp_path / "my.toml", model=TIMM_MODEL, data='dataset = "synthetic"')
    argv = ["compare", str(recipe), flag, value, "--out", str(tmp_path / "cmp")]
    _one_line_error(capsys, argv, *names)
    assert not (tmp_path / "cmp").exists()  # refused before anything ran


# --- the README's recipe -----------------------------------------------------------------------


def test_the_readme_recipe_for_your_own_data_trains(tmp_path: Path, capsys) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    assert 'arch = "timm:seresnet18"' in toml and 'dataset = "imagefolder"' in toml
    root = _image_folder(tmp_path / "images", n_train=2, n_val=1)
    toml = toml.replace('"recipes/base.toml"', f'"{BASE.as_posix()}"')
    toml = toml.replace('"/data/my_images"', f'"{root.as_posix()}"')
    recipe = tmp_path / "my.toml"
    recipe.write_text(toml)
    sets = ["optim.epochs=1", "optim.batch_size=10", "optim.milestones=[]"]
    sets += ["model.kwargs={channels = [8, 16, 32, 64]}", "system.threads=1"]
    argv = ["train", str(recipe), "--out", str(tmp_path / "run"), *_sets(sets)]
    assert main(argv) == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (res["name"], res["num_test"]) == ("my_data", 10)
    assert "at 64px" in res["data_source"]
