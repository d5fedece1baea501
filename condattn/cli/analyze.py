"""``condattn analyze CHECKPOINT [CHECKPOINT]``: the std of the attention gates (paper Fig. 6).

The command half of :mod:`condattn.analysis`: it rebuilds the models with
:func:`condattn.train.checkpoint.load_model` (the loader ``condattn eval`` uses too), picks the
test images, and writes one stats JSON per model and, for two models, the Fig. 6 plot: into
``--out``, or else the ``analysis`` folder of the (last) checkpoint's run directory, never over an
existing file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from condattn.cli._common import UserError, check_device

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["HELP", "add_arguments", "run"]

HELP = "std of the attention gates s per block (paper Fig. 6)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``condattn analyze CHECKPOINT [CHECKPOINT]``."""
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="one or two run checkpoints (checkpoint.pt or its run directory), or files "
        "written by condattn.save (then give --arch); two: the first is the baseline "
        "(SE, gray), the second the modified model (SE-R, red)",
    )
    p.add_argument("--data", help="CIFAR-100 folder or archive (default: search)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic images instead")
    p.add_argument("--n", type=int, default=128, help="number of test images (paper: 128)")
    p.add_argument("--stage", default="layer3", help="stage to plot (paper: stage 3 = layer3)")
    p.add_argument(
        "--out",
        help="output folder (stats JSON + PNG); default: RUN_DIR/analysis of the last checkpoint",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--seed", type=int, default=0, help="seed of the random image choice")
    p.add_argument("--arch", help="base model for condattn.save files, e.g. se_resnet50")
    p.add_argument(
        "--widths",
        type=int,
        nargs=4,
        default=None,
        help="stage widths of the --arch base model (default: the paper's)",
    )
    p.add_argument("--num-classes", type=int, default=None, help="default: from the weights")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))


def _images(*, n: int, data: str | None, synthetic: bool, seed: int) -> tuple[Tensor, str]:
    """``n`` randomly chosen CIFAR-100 test images, normalised as for evaluation."""
    import torch

    from condattn.data import (
        BatchAugment,
        CifarNotFoundError,
        find_cifar100,
        load_cifar100,
        synthetic_cifar100,
    )

    if synthetic:
        ds = synthetic_cifar100(n_train=1, n_test=max(n, 1), seed=seed)
    else:
        root = data or find_cifar100()
        if root is None:
            raise CifarNotFoundError("no CIFAR-100 found; pass --data DIR or --synthetic")
        ds = load_cifar100(root)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(ds.test_images.shape[0], generator=gen)[:n]
    images = BatchAugment.eval_transform()(ds.test_images[idx])
    return images, f"{ds.source}, {len(idx)} test images (seed {seed})"


def _out_dir(args: argparse.Namespace) -> Path:
    """``--out``, or the ``analysis`` folder beside the last checkpoint (its run directory)."""
    if args.out:
        return Path(args.out)
    from condattn.train.checkpoint import checkpoint_file

    return checkpoint_file(args.checkpoints[-1]).parent / "analysis"


def _check_stage(stage: str, all_stats: list[dict]) -> None:
    names = [k for stats in all_stats for k in stats["blocks"]]
    if not any(k.startswith(stage + ".") for k in names):
        under = sorted({k.split(".")[0] for k in names})
        raise ValueError(
            f"--stage {stage!r} holds no attention block; stages with attention: "
            f"{', '.join(under) or '(none: the models have no attention)'}"
        )


def run(args: argparse.Namespace) -> int:
    """Stats JSON per model and, for two models, the Fig. 6 plot; returns the exit status."""
    from condattn.analysis import attention_stats, plot_attention_std
    from condattn.train.checkpoint import load_model

    if len(args.checkpoints) > 2:
        raise UserError("analyze takes one or two checkpoints")
    if args.n < 1:
        raise UserError(f"--n must be >= 1 (the number of test images), got {args.n}")
    check_device(args.device, flag="--device")
    out = _out_dir(args)
    n = len(args.checkpoints)
    files = [out / f"attention_stats_{i}.json" for i in range(n)]
    png = out / "attention_std.png"
    existing = [str(f) for f in [*files, *([png] if n == 2 else [])] if f.exists()]
    if existing and not args.overwrite:
        raise UserError(
            f"{existing[0]} exists; pass --overwrite to replace it, or --out for another folder"
        )
    images, source = _images(n=args.n, data=args.data, synthetic=args.synthetic, seed=args.seed)
    all_stats, labels = [], []
    for ck in args.checkpoints:
        loaded = load_model(ck, arch=args.arch, num_classes=args.num_classes, widths=args.widths)
        stats = attention_stats(loaded.model.to(args.device), images, stage=None)
        stats.update(checkpoint=str(ck), label=loaded.label, images=source)
        all_stats.append(stats)
        labels.append(loaded.label)
    _check_stage(args.stage, all_stats)
    out.mkdir(parents=True, exist_ok=True)
    for stats, label, path in zip(all_stats, labels, files):
        path.write_text(json.dumps(stats, indent=1) + "\n")
        blocks = {k: v for k, v in stats["blocks"].items() if k.startswith(args.stage + ".")}
        summary = ", ".join(f"{k} {v['mean_std']:.4f}" for k, v in blocks.items())
        print(f"{label}: mean std of s per {args.stage} block: {summary or '(none)'}")
        print(f"  wrote {path}")
    if n == 2:
        plot_attention_std(*all_stats, labels=labels, path=png, stage=args.stage)
        print(f"  wrote {png} (paper Fig. 6)")
    return 0
