"""A tiny model registry (after torchvision ``models/_api.py``): names -> builder functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(
    name: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder under ``name`` (default: its function name)."""

    def wrapper(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _MODELS:
            raise ValueError(f"a model named {key!r} is already registered")
        _MODELS[key] = fn
        return fn

    return wrapper


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a substring."""
    return sorted(k for k in _MODELS if pattern is None or pattern in k)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("se_resnet50", num_classes=100)``."""
    try:
        fn = _MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None
    return fn(**kwargs)
