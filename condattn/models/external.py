"""Models from other zoos: ``timm:NAME`` and ``torchvision:NAME``.

The only module that imports timm to build models (the swap table in
:mod:`condattn.transform.mappings` imports it to recognise timm's attention blocks). Every build
starts from random weights (``pretrained=False`` / ``weights=None``: nothing is downloaded) with
``num_classes`` outputs, and any further keyword options go to the zoo's own constructor, e.g.
timm's ``drop_rate``.

Input sizes: at 32x32 (CIFAR) every torchvision classification model in 0.29 runs except
``alexnet`` (needs >= 63 px), ``inception_v3`` (>= 75 px), ``maxvit_t`` (224 px; its partition
size is fixed) and the ``vit_*`` models (224 px by default; pass ``image_size=32`` to build them
for 32 px). Survey: one train-mode forward of a 2-image batch per model (2-core CPU, torch 2.14).

``googlenet`` and ``inception_v3`` are built without their own aux classifiers
(``aux_logits=False``), so that they return one tensor of logits in train and eval mode; condattn
adds its own heads.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = [
    "SOURCES",
    "build_external",
    "check_external_name",
    "is_external",
    "list_external_models",
    "split_name",
]

#: the prefixes of ``SOURCE:NAME`` model names, in the order the error messages list them
SOURCES = ("timm", "torchvision")
# Options that the build sets itself: random init and the number of classes from the data.
_RESERVED = {
    "num_classes": "it comes from the data (num_classes=)",
    "pretrained": "builds start from random weights; nothing is downloaded",
    "weights": "builds start from random weights; nothing is downloaded",
    "r": "model.r configures condattn's CIFAR zoo only; pass the zoo's own option",
    "widths": "model.widths configures condattn's CIFAR zoo only; pass the zoo's own option",
}
# torchvision models whose own aux classifiers would make the train-mode output a namedtuple.
_TORCHVISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_FORMS = "a condattn zoo name (condattn.models.list_models()), 'timm:NAME' or 'torchvision:NAME'"


def is_external(name: str) -> bool:
    """True for ``SOURCE:NAME`` names (any prefix; :func:`split_name` checks it)."""
    return ":" in name


def split_name(name: str) -> tuple[str, str]:
    """``"timm:seresnet18"`` -> ``("timm", "seresnet18")``.

    Raises:
        ValueError: the prefix is not one of :data:`SOURCES`, or NAME is empty.
    """
    source, _, model = name.partition(":")
    if source not in SOURCES:
        raise ValueError(
            f"unknown model source {source!r} in {name!r}; valid sources: {', '.join(SOURCES)} "
            f"(a model name is {_FORMS})"
        )
    if not model:
        raise ValueError(f"{name!r} names no model; write {source}:NAME")
    return source, model


def _import_timm():
    try:
        import timm
    except ImportError:
        raise ModuleNotFoundError(
            "timm:NAME models need timm, which is not installed: pip install timm"
        ) from None
    return timm


def list_external_models(source: str) -> list[str]:
    """Sorted names (no prefix) of the models that ``source`` builds: "timm" or "torchvision".

    For torchvision, the classification models only.
    """
    if source == "timm":
        return sorted(_import_timm().list_models())
    if source == "torchvision":
        import torchvision

        return sorted(torchvision.models.list_models(module=torchvision.models))
    raise ValueError(f"unknown model source {source!r}; valid sources: {', '.join(SOURCES)}")


def check_external_name(name: str) -> tuple[str, str]:
    """Splits ``name`` and checks that its zoo has the model; returns ``(source, model)``.

    A timm name may carry a pretrained tag (``resnet18.a1_in1k``); only the part before the dot
    is checked, and the tag does not matter since no weights are loaded.

    Raises:
        ValueError: an unknown source or model, in one line with the closest valid names.
        ModuleNotFoundError: ``timm:`` with timm not installed.
    """
    source, model = split_name(name)
    valid = list_external_models(source)
    if (model.split(".")[0] if source == "timm" else model) in valid:
        return source, model
    close = difflib.get_close_matches(model, valid, n=5, cutoff=0.6)
    hint = (
        f"close matches: {', '.join(f'{source}:{c}' for c in close)}" if close else "no close match"
    )
    elsewhere = [s for s in SOURCES if s != source and _has(s, model)]
    also = f"; {', '.join(f'{s}:{model}' for s in elsewhere)} exists" if elsewhere else ""
    raise ValueError(
        f"unknown {source} model {model!r} ({hint}{also}); a model name is {_FORMS}, see "
        f"condattn.models.list_external_models({source!r})"
    )


def _has(source: str, model: str) -> bool:
    try:
        return model in list_external_models(source)
    except ImportError:
        return False


def build_external(
    name: str, *, num_classes: int, kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    """Builds ``timm:NAME`` or ``torchvision:NAME`` with random weights and ``num_classes`` outputs.

    Args:
        name: ``"timm:NAME"`` or ``"torchvision:NAME"``.
        num_classes: n, the number of logits (and of the T entries after conversion, Eq. 4).
        kwargs: further options for the zoo's constructor (``timm.create_model`` /
            ``torchvision.models.get_model``), e.g. ``{"drop_rate": 0.2}``.

    Raises:
        ValueError: unknown name (with close matches), non-positive ``num_classes``, or an option
            that the build sets itself (``num_classes``, ``pretrained``, ``weights``) or that only
            condattn's zoo takes (``r``, ``widths``).
        ModuleNotFoundError: ``timm:`` with timm not installed (``pip install timm``).
    """
    source, model = check_external_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    options = dict(kwargs or {})
    reserved = sorted(set(options) & set(_RESERVED))
    if reserved:
        key = reserved[0]
        raise ValueError(f"{name}: option {key!r} cannot be passed: {_RESERVED[key]}")
    if source == "timm":
        return _import_timm().create_model(
            model, pretrained=False, num_classes=num_classes, **options
        )
    import torchvision

    options = {**_TORCHVISION_DEFAULTS.get(model, {}), **options}
    return torchvision.models.get_model(model, weights=None, num_classes=num_classes, **options)
