"""Builds what a run needs from its config: the data, the model, the loss and the optimiser."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from condattn._io import derive_seed
from condattn.convert import convert, get_config, list_attention
from condattn.data import (
    BatchAugment,
    CifarData,
    CifarNotFoundError,
    find_cifar100,
    load_cifar100,
    synthetic_cifar100,
)
from condattn.losses import DeepSupervisionLoss
from condattn.mappings import swappable_types
from condattn.models import create_model, is_external
from condattn.outputs import CondOutput
from condattn.train.config import ConfigError, TrainConfig

__all__ = [
    "as_output",
    "build_augment",
    "build_loss",
    "build_model",
    "build_optimizer",
    "load_data",
]

_NOT_FOUND = (
    "no CIFAR-100 data found. Looked in $CONDATTN_DATA, ./data and ../shared/data (relative to "
    "the working directory and to the repository root). Put cifar-100-python.tar.gz (or the "
    "extracted cifar-100-python/ folder) in one of them, or pass --data DIR. --download fetches "
    "the official archive into ./data (needs internet access); --synthetic trains on a small "
    "synthetic set instead."
)


def _subset(images: Tensor, labels: Tensor, n: int, stream: str) -> tuple[Tensor, Tensor]:
    """A fixed random subset of ``n`` samples (the same for every seed and rank), in file order."""
    if n <= 0 or n >= images.shape[0]:
        return images, labels
    gen = torch.Generator().manual_seed(derive_seed(0, stream))
    idx = torch.randperm(images.shape[0], generator=gen)[:n].sort().values
    return images[idx], labels[idx]


def load_data(
    cfg: TrainConfig, *, root: str | None = None, synthetic: bool = False, download: bool = False
) -> CifarData:
    """Loads CIFAR-100 (or the synthetic stand-in) and applies ``data.train_subset/test_subset``.

    Args:
        cfg: the run config.
        root: overrides ``data.root``; None and an empty ``data.root`` search with
            :func:`condattn.data.find_cifar100`.
        synthetic: use an in-memory synthetic set of ``data.synthetic_train/test`` images.
        download: fetch the archive when none is found (needs internet access).

    Raises:
        CifarNotFoundError: nothing found; the message says where to put the data.
    """
    if synthetic:
        data = synthetic_cifar100(
            n_train=cfg.data.synthetic_train, n_test=cfg.data.synthetic_test, seed=0
        )
    else:
        where = root or cfg.data.root or find_cifar100()
        if where is None and download:
            where = Path("data")
        if where is None:
            raise CifarNotFoundError(_NOT_FOUND)
        data = load_cifar100(where, download=download)
    train_x, train_y = _subset(data.train_images, data.train_labels, cfg.data.train_subset, "tr")
    test_x, test_y = _subset(data.test_images, data.test_labels, cfg.data.test_subset, "te")
    if (train_x.shape[0], test_x.shape[0]) == (
        data.train_images.shape[0],
        data.test_images.shape[0],
    ):
        return data
    source = f"{data.source} [subset: {train_x.shape[0]} train, {test_x.shape[0]} test]"
    return CifarData(train_x, train_y, test_x, test_y, data.classes, source)


def build_augment(cfg: TrainConfig, *, train: bool) -> BatchAugment:
    """The paper's augmentation (crop+flip+rotation, normalise) or normalise-only for eval."""
    d = cfg.data
    cl = cfg.system.channels_last
    if not train:
        return BatchAugment.eval_transform(channels_last=cl)
    return BatchAugment(
        crop=d.crop,
        padding=d.padding,
        flip=d.flip,
        rotate=d.rotate,
        max_angle=d.max_angle,
        channels_last=cl,
    )


def build_model(cfg: TrainConfig, *, num_classes: int) -> nn.Module:
    """Creates ``model.arch`` and converts it for the variant.

    ``model.arch`` is a condattn zoo name (built with ``model.r`` and ``model.widths``),
    ``timm:NAME`` or ``torchvision:NAME`` (random weights); ``model.kwargs`` go to its
    constructor either way.

    - ``se``: the plain model (its tensor output is wrapped by :func:`as_output`); for a model
      without attention this is the baseline;
    - ``se_a``: :func:`~condattn.convert.convert` with ``conditioned=False``: heads and loss,
      attention untouched;
    - ``se_r``: the same with ``conditioned=True``; with ``model.aux_model`` the section 5.6
      variant, where that network supplies T.

    Seed torch before calling it for a reproducible init.

    Raises:
        ConfigError: ``se_r`` on a model without attention that condattn can condition, or
            ``aux_at = "auto"`` placing another number of heads than the config expects.
    """
    m = cfg.model
    kwargs: dict[str, object] = {**m.kwargs, "num_classes": num_classes}
    if not is_external(m.arch):  # r and widths configure condattn's zoo only
        kwargs["r"] = m.r
        if m.widths:
            kwargs["widths"] = tuple(m.widths)
    net = create_model(m.arch, **kwargs)
    if m.variant == "se":
        return net
    if m.variant == "se_r":
        _require_attention(net, m.arch)
    aux_model = create_model(m.aux_model, num_classes=num_classes) if m.aux_model else None
    converted = convert(
        net,
        aux_at="auto" if m.auto_aux_at else list(m.aux_at),
        num_classes=num_classes,
        conditioned=m.variant == "se_r",
        cond=m.cond,
        detach_cond=m.detach_cond,
        aux_dropout=m.aux_dropout,
        init=m.cond_init,
        aux_model=aux_model,
    )
    placed = get_config(converted)
    if m.auto_aux_at and len(placed.aux_at) + (aux_model is not None) != cfg.num_heads:
        raise ConfigError(
            f"model.aux_at='auto' placed {len(placed.aux_at)} head(s) on {m.arch} "
            f"({list(placed.aux_at)}: {placed.placement}), but the config "
            f"expects {cfg.num_heads} aux output(s); list model.aux_at (and loss.aux_weights)"
        )
    return converted


def _require_attention(net: nn.Module, arch: str) -> None:
    """SE-R conditions attention blocks (Eq. 4); a model with none has nothing to condition."""
    if list_attention(net):
        return
    kinds = sorted({f"{t.__module__.split('.')[0]}.{t.__name__}" for t in swappable_types()})
    raise ConfigError(
        f"model.variant='se_r': {arch} has no attention block that condattn can condition, so "
        f"there is nothing to condition (supported: {', '.join(kinds)}, inline SE, and types "
        "added with condattn.register_attention); use variant 'se_a' for the aux heads alone, "
        "or 'se' for the plain model"
    )


def as_output(out: object) -> CondOutput:
    """Normalises a model output (tensor, CondOutput or a plain 2-tuple) to :class:`CondOutput`."""
    if isinstance(out, CondOutput):
        return out
    if isinstance(out, Tensor):
        return CondOutput(out, ())
    if isinstance(out, tuple) and len(out) == 2:
        return CondOutput(out[0], tuple(out[1]))
    raise TypeError(f"the model returned {type(out).__name__}; expected a Tensor or CondOutput")


def build_loss(cfg: TrainConfig) -> DeepSupervisionLoss:
    """``DeepSupervisionLoss`` with the config's lossW (resolved per depth by the config)."""
    return DeepSupervisionLoss(cfg.loss.aux_weights, label_smoothing=cfg.loss.label_smoothing)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.SGD:
    """SGD with Nesterov momentum and weight decay on every parameter (paper section 4)."""
    o = cfg.optim
    return torch.optim.SGD(
        model.parameters(),
        lr=o.lr,
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay,
    )
