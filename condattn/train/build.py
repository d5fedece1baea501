"""Builds what a run needs from its config: the data, the model, the loss and the optimiser."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from condattn._io import derive_seed
from condattn.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    BatchAugment,
    BatchRandomResizedCrop,
    ImageData,
    LoadOptions,
    load_dataset,
)
from condattn.losses import DeepSupervisionLoss
from condattn.models import create_model, is_external
from condattn.outputs import CondOutput
from condattn.train.config import ConfigError, ModelConfig, TrainConfig
from condattn.transform.add_attention import add_attention
from condattn.transform.config import ConvertConfig
from condattn.transform.convert import convert, get_config
from condattn.transform.discovery import list_attention
from condattn.transform.mappings import swappable_types

__all__ = [
    "as_output",
    "augment_kind",
    "build_augment",
    "build_loss",
    "build_model",
    "build_optimizer",
    "load_data",
]


def _subset(images: Tensor, labels: Tensor, n: int, stream: str) -> tuple[Tensor, Tensor]:
    """A fixed random subset of ``n`` samples (the same for every seed and rank), in file order."""
    if n <= 0 or n >= images.shape[0]:
        return images, labels
    gen = torch.Generator().manual_seed(derive_seed(0, stream))
    idx = torch.randperm(images.shape[0], generator=gen)[:n].sort().values
    return images[idx], labels[idx]


def load_data(
    cfg: TrainConfig,
    *,
    root: str | None = None,
    synthetic: bool = False,
    download: bool = False,
) -> ImageData:
    """Loads ``data.dataset`` (or the synthetic stand-in) and applies ``data.train_subset`` and
    ``data.test_subset``.

    Args:
        cfg: the run config; ``[data]`` names the dataset and its options.
        root: overrides ``data.root``; both empty: the dataset's search (see
            :mod:`condattn.data.datasets`). A root that is given but missing is an error.
        synthetic: use the in-memory synthetic set of ``data.synthetic_train/test`` images
            (the same as ``data.dataset = "synthetic"``).
        download: fetch the CIFAR archive when none is found (needs internet access).

    Returns:
        :class:`~condattn.data.ImageData`; a subset keeps the full train split's mean/std.

    Raises:
        condattn.data.DataNotFoundError: nothing found; the message says where it looked.
        condattn.data.DataError: unusable data; the message names the file and the fix.
    """
    d = cfg.data
    options = LoadOptions(
        root=root or d.root or None,
        download=download,
        image_size=0 if synthetic else d.image_size,  # --synthetic: 32 px for any recipe
        val_fraction=d.val_fraction,
        split_seed=d.split_seed,
        skip_bad_images=d.skip_bad_images,
        workers=d.decode_workers,
        n_train=d.synthetic_train,
        n_test=d.synthetic_test,
        seed=0,
    )
    data = load_dataset("synthetic" if synthetic else d.dataset, options)
    train_x, train_y = _subset(data.train_images, data.train_labels, d.train_subset, "tr")
    test_x, test_y = _subset(data.test_images, data.test_labels, d.test_subset, "te")
    if (train_x.shape[0], test_x.shape[0]) == (
        data.train_images.shape[0],
        data.test_images.shape[0],
    ):
        return data
    source = f"{data.source} [subset: {train_x.shape[0]} train, {test_x.shape[0]} test]"
    return data.replace(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        source=source,
    )


def augment_kind(augment: str, image_size: tuple[int, int]) -> str:
    """``data.augment`` resolved: "auto" is "paper" up to 32 px and "rrc" above.

    The paper's pad-4 crop and +-15 deg rotation are the CIFAR (32 px) recipe; larger images
    get the ImageNet recipe (random resized crop + flip).
    """
    if augment == "auto":
        return "paper" if max(image_size) <= 32 else "rrc"
    if augment not in ("paper", "rrc"):
        raise ConfigError(f"data.augment={augment!r}; valid: ['auto', 'paper', 'rrc']")
    return augment


def build_augment(
    cfg: TrainConfig, *, train: bool, data: ImageData | None = None, channels_last: bool = False
) -> BatchAugment | BatchRandomResizedCrop:
    """The train augmentation (``data.augment``) or normalise-only for eval.

    Normalisation uses the dataset's train-split mean/std (``data.normalize = "mean"``: the
    mean only, as the paper says). Eval needs no resize: images are stored at their size.

    Args:
        cfg: the run config.
        train: the train augmentation; else normalisation only.
        data: the loaded dataset, for its mean/std and image size. None: CIFAR-100's published
            mean/std and 32 px (what runs used before datasets carried their statistics).
        channels_last: batches in ``torch.channels_last`` format (the run's SpeedPlan says).
    """
    d = cfg.data
    mean = data.mean if data is not None else CIFAR100_MEAN
    std = data.std if data is not None else CIFAR100_STD
    if d.normalize == "mean":
        std = (1.0,) * len(mean)
    common = {"mean": mean, "std": std, "channels_last": channels_last}
    if not train:
        return BatchAugment.eval_transform(**common)
    size = data.image_size if data is not None else (32, 32)
    if augment_kind(d.augment, size) == "rrc":
        return BatchRandomResizedCrop(size=size, scale=tuple(d.rrc_scale), flip=d.flip, **common)
    return BatchAugment(
        crop=d.crop,
        padding=d.padding,
        flip=d.flip,
        rotate=d.rotate,
        max_angle=d.max_angle,
        **common,
    )


def convert_options(m: ModelConfig, *, num_classes: int) -> ConvertConfig:
    """The recipe's ``[model]`` table as :class:`~condattn.ConvertConfig`: every option of the
    same name is taken as it is (a new conversion option needs only its ``ModelConfig`` key);
    the others are translated here."""
    same = {k: getattr(m, k) for k in ConvertConfig().options() if hasattr(m, k)}
    return ConvertConfig(
        **{
            **same,
            "aux_at": "auto" if m.auto_aux_at else tuple(m.aux_at),
            "num_classes": num_classes,
            "conditioned": m.variant == "se_r",
            "cond_rank": m.cond_rank or None,  # TOML has no None: 0 feeds T whole
            "aux_head": m.aux_head or {},
            "init": m.cond_init,
        }
    )


def build_model(cfg: TrainConfig, *, num_classes: int) -> nn.Module:
    """Creates ``model.arch`` and converts it for the variant.

    ``model.arch`` is a condattn zoo name (built with ``model.r`` and ``model.widths``),
    ``timm:NAME`` or ``torchvision:NAME`` (random weights); ``model.kwargs`` go to its
    constructor either way. With ``model.add_attention`` (a kind), :func:`condattn.add_attention`
    first inserts that attention (reduction ``model.r``, at ``model.add_attention_at``).

    - ``se``: the plain model (its tensor output is wrapped by :func:`as_output`); for a model
      without attention this is the baseline;
    - ``se_a``: :func:`~condattn.convert` with ``conditioned=False``: heads and loss,
      attention untouched;
    - ``se_r``: the same with ``conditioned=True``; with ``model.aux_model`` the section 5.6
      variant, where that network supplies T (to ``model.aux_model_feeds`` when given, the
      heads keeping their default routing).

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
    if m.add_attention:  # a plain CNN: its attention first, then the variant
        at = "auto" if m.add_attention_at == ("auto",) else list(m.add_attention_at)
        net = add_attention(net, kind=m.add_attention, at=at, r=m.r, init=m.add_attention_init)
    if m.variant == "se":
        return net
    if m.variant == "se_r":
        _require_attention(net, m.arch)
    aux_model = create_model(m.aux_model, num_classes=num_classes) if m.aux_model else None
    converted = convert(
        net,
        convert_options(m, num_classes=num_classes),
        aux_model=aux_model,
        feeds=_feeds(net, m) if m.aux_model_feeds else None,
    )
    placed = get_config(converted)
    if m.auto_aux_at and len(placed.aux_at) + (aux_model is not None) != cfg.num_heads:
        raise ConfigError(
            f"model.aux_at='auto' placed {len(placed.aux_at)} head(s) on {m.arch} "
            f"({list(placed.aux_at)}: {placed.placement}), but the config "
            f"expects {cfg.num_heads} aux output(s); list model.aux_at (and loss.aux_weights)"
        )
    return converted


def _feeds(net: nn.Module, m: ModelConfig) -> dict[str, list[str]]:
    """``model.aux_model_feeds`` for the aux model; each aux_at head keeps its default routing
    (convert refuses an attention block claimed by both)."""
    routing: dict[str, list[str]] = {h: [] for h in m.aux_at}
    for name, info in list_attention(net, list(m.aux_at)).items():
        if info["fed_by"] is not None:
            routing[info["fed_by"]].append(name)
    return {**routing, "aux_model": list(m.aux_model_feeds)}


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
