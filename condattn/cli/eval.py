"""``condattn eval CHECKPOINT``: test loss and top-1/top-5 of a run checkpoint, as JSON."""

from __future__ import annotations

import argparse
import json

from condattn.cli._common import DATA_HELP, check_device

__all__ = ["HELP", "add_arguments", "run"]

HELP = "evaluate a checkpoint on the test set"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint.pt (or the run directory holding it)")
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--synthetic", action="store_true", help="evaluate on the synthetic set")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from condattn.data import TensorLoader
    from condattn.train import distributed as D
    from condattn.train.build import build_augment, build_loss, load_data
    from condattn.train.checkpoint import load_checkpoint, model_from_checkpoint
    from condattn.train.loop import evaluate, speed_plan
    from condattn.train.recipe import config_from_dict

    check_device(args.device, flag="--device")
    state = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(state["config"])
    cfg = dataclasses.replace(cfg, system=dataclasses.replace(cfg.system, device=args.device))
    data = load_data(cfg, root=args.data, synthetic=args.synthetic)
    device = D.device_for(D.DistEnv(), args.device)
    plan = speed_plan(cfg, device)  # the training's fast path: precision, format, threads
    torch.set_num_threads(plan.threads)
    model = model_from_checkpoint(
        state, num_classes=data.num_classes, source=str(args.checkpoint)
    ).to(device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = TensorLoader(
        data.test_images,
        data.test_labels,
        batch_size=cfg.system.eval_batch_size,
        shuffle=False,
        augment=build_augment(cfg, train=False, data=data, channels_last=plan.channels_last),
        device=device,
    )
    with torch.inference_mode():
        res = evaluate(
            model,
            loader,
            criterion=build_loss(cfg),
            num_aux=len(cfg.loss.aux_weights),
            plan=plan,
        )
    out = {
        "checkpoint": str(args.checkpoint),
        "epoch": state["epoch"],
        "data": data.source,
        "test_top1": res["top1"],
        "test_top5": res["top5"],
        "test_loss": res["loss"],
        "n": res["n"],
    }
    print(json.dumps(out, indent=2))
    return 0
