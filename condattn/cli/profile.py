"""``condattn profile MODEL``: parameters and MACs of a model (paper Tables 1-2)."""

from __future__ import annotations

import argparse

from condattn.cli._common import UserError

__all__ = ["HELP", "add_arguments", "run"]

HELP = "count params and MACs of a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="a registered model name (e.g. se_resnet50), timm:NAME or torchvision:NAME"
    )
    p.add_argument("--variant", default="se", help="se | se_a | se_r")
    p.add_argument("--rules", default="paper", help="MAC rules: paper | thop | flop_counter")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--r", type=int, help="SE reduction ratio of condattn's zoo models (default 8)")
    p.add_argument(
        "--aux-at",
        help="comma-separated stages for heads, or auto (default: layer2,layer3 for the zoo, "
        "auto for timm:/torchvision: models)",
    )
    p.add_argument("--image-size", type=int, default=32, help="side of the square input")
    p.add_argument(
        "--cond-rank",
        type=int,
        default=0,
        help="se_r: project T to K values per head before the blocks (default 0: T whole)",
    )
    p.add_argument("--cond", default="logits", help="se_r: what T is (logits | probs | ...)")
    p.add_argument("--cond-mode", default="concat", help="se_r: how T enters (concat | film)")


def run(args: argparse.Namespace) -> int:
    from condattn.models import is_external
    from condattn.profiling import MAC_RULES, count_macs, count_params
    from condattn.train.build import build_model
    from condattn.train.recipe import config_from_dict

    if args.rules not in MAC_RULES:
        raise UserError(f"unknown --rules {args.rules!r}; valid: {', '.join(MAC_RULES)}")
    external = is_external(args.model)
    model_cfg = {"arch": args.model, "variant": args.variant}
    model_cfg["aux_at"] = args.aux_at or ("auto" if external else "layer2,layer3")
    if args.r is not None:  # zoo only: the config refuses r for a timm:/torchvision: model
        model_cfg["r"] = args.r
    if args.cond_rank < 0:
        raise UserError(f"--cond-rank must be >= 0 (0: T whole), got {args.cond_rank}")
    model_cfg.update(cond_rank=args.cond_rank, cond=args.cond, cond_mode=args.cond_mode)
    cfg = config_from_dict({"model": model_cfg})
    model = build_model(cfg, num_classes=args.num_classes)
    shape = (1, 3, args.image_size, args.image_size)
    params, macs = count_params(model), count_macs(model, shape, rules=args.rules)
    r = "" if external else f" r={cfg.model.r}"
    m, extra = cfg.model, f", n={args.num_classes}"
    if args.variant == "se_r":  # condattn's options, where not the paper's
        extra += "" if m.cond == "logits" else f", cond={m.cond}"
        extra += "" if m.cond_mode == "concat" else f", cond_mode={m.cond_mode}"
        extra += f", cond_rank={m.cond_rank}" if m.cond_rank else ""
    print(
        f"{args.model} variant={args.variant}{r}: params {params / 1e6:.3f}M, "
        f"MACs {macs / 1e9:.3f}G (rules={args.rules}, input {'x'.join(map(str, shape))}{extra})"
    )
    return 0
