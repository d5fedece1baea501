"""A tiny model registry (after torchvision ``models/_api.py``): names -> builder functions.

The registry is strict: it holds condattn's own models and refuses duplicates. Names of the form
``timm:NAME`` and ``torchvision:NAME`` are not registered; :func:`create_model` hands them to
:mod:`condattn.models.external`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

import condattn.models.external as external

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(
    name: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder under ``name`` (default: its function name).

    Raises:
        ValueError: the name is taken, or it contains ``:`` (reserved for ``timm:NAME`` and
            ``torchvision:NAME``).
    """

    def wrapper(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if external.is_external(key):
            raise ValueError(f"model names may not contain ':' (reserved for SOURCE:NAME): {key!r}")
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    return wrapper


def list_models(pattern: str | None = None, *, source: str = "condattn") -> list[str]:
    """Sorted model names, optionally filtered by a substring.

    Args:
        pattern: keep only names containing it.
        source: ``"condattn"`` (the registry), ``"timm"`` or ``"torchvision"``; the external
            names come with their prefix, ready for :func:`create_model`.
    """
    if source == "condattn":
        names = list(_MODELS)
    elif source in external.SOURCES:
        names = [f"{source}:{n}" for n in external.list_external_models(source)]
    else:
        raise ValueError(
            f"unknown model source {source!r}; valid: condattn, {', '.join(external.SOURCES)}"
        )
    return sorted(n for n in names if pattern is None or pattern in n)


def check_model_name(name: str) -> str:
    """Checks that :func:`create_model` knows ``name``; returns its source.

    Returns:
        ``"condattn"``, ``"timm"`` or ``"torchvision"``.

    Raises:
        ValueError: an unknown name, in one line with close matches and the valid forms.
        ModuleNotFoundError: a ``timm:`` name with timm not installed.
    """
    if external.is_external(name):
        return external.check_external_name(name)[0]
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.6)
        hint = f" (close matches: {', '.join(close)})" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}: it is not a registered model; valid: "
            f"{', '.join(list_models())}, or 'timm:NAME' / 'torchvision:NAME' for those zoos"
        )
    return "condattn"


#: the size arguments that create_model checks before building (zoo and external alike)
SIZE_ARGS = ("num_classes", "r", "widths", "layers")


def check_sizes(**sizes: Any) -> None:
    """Raises ValueError naming the first argument that is not a positive int (or ints).

    ``check_sizes(num_classes=0)`` -> ``ValueError("num_classes must be a positive integer...")``.
    """
    for arg, value in sizes.items():
        many = isinstance(value, (list, tuple))
        values = value if many else (value,)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            what = "a list of positive integers" if many else "a positive integer"
            raise ValueError(f"{arg} must be {what}, got {value!r}")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a model by name, e.g. ``create_model("se_resnet50", num_classes=100)``.

    Three forms of ``name``:

    - a registered condattn name (:func:`list_models`): the keyword arguments go to its builder;
    - ``"timm:NAME"`` or ``"torchvision:NAME"``: built with random weights by that zoo
      (:func:`condattn.models.external.build_external`); the keyword arguments other than
      ``num_classes`` go to the zoo's constructor, and ``r``/``widths`` are refused.

    Raises:
        ValueError: an unknown name (with close matches), or a non-positive ``num_classes``,
            ``r``, ``widths`` or ``layers``, naming the argument.
        ModuleNotFoundError: a ``timm:`` name with timm not installed.
    """
    check_sizes(**{arg: kwargs[arg] for arg in SIZE_ARGS if arg in kwargs})
    if external.is_external(name):
        if "num_classes" not in kwargs:
            raise ValueError(f"{name}: pass num_classes= (the number of classes of the data)")
        n = kwargs.pop("num_classes")
        return external.build_external(name, num_classes=n, kwargs=kwargs)
    check_model_name(name)
    return _MODELS[name](**kwargs)
