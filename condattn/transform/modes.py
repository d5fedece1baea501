"""A converted model follows ``.train()`` / ``.eval()``: one fx graph per mode.

Why: torch.fx runs ``forward`` once with proxies, so every read of ``self.training`` is a plain
Python bool at trace time and ends up in the graph as a constant. ``F.dropout(x, p,
training=self.training)``, timm's ``drop_path`` and ``BatchNormAct2d``, torchvision's
``StochasticDepth`` and any ``if self.training:`` branch are frozen in the mode the model was
traced in. A model traced in train mode then drops activations (and updates BN statistics) in
eval; one traced in eval mode silently loses its dropout in training.

The answer, as in torchvision's ``create_feature_extractor`` (its ``DualGraphModule``): trace the
model in both modes, convert both graphs the same way (same heads, same twins: the modules are
shared), and keep both. :class:`DualGraphModule` compiles the two graphs once; its ``forward``
picks the graph of ``self.training`` at every call. Switching modes recompiles nothing, so
``torch.compile`` sees two stable code objects and guards on ``training`` as it does for any
module. Where both graphs generate the same code (no mode-dependent code outside leaf modules:
``nn.Dropout`` and ``nn.BatchNorm2d`` are leaves and follow the mode by themselves), one graph
serves both modes and ``forward`` is that graph's code, exactly as a plain ``GraphModule``.

``graph`` and ``code`` are the current mode's. Pickling, ``copy.deepcopy``, ``copy.copy`` (and
so ``nn.DataParallel``) keep both graphs. The source model's public face (plain attributes such
as timm's ``pretrained_cfg``, and a few methods) is carried over by :func:`carry_face`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.fx.graph_module import _format_import_block, reduce_graph_module
from torch.package import sys_importer

__all__ = ["DualGraphModule", "carry_face", "join", "map_graphs", "mode_forward"]


class DualGraphModule(fx.GraphModule):
    """A ``GraphModule`` with a train graph and an eval graph over the same submodules.

    Args:
        root: the module that holds every submodule and attribute either graph references.
        train_graph: the graph run while ``self.training`` is True.
        eval_graph: the graph run in eval mode; may be ``train_graph`` itself.
        class_name: the name shown for the generated class.
        eval_root: where targets only the eval graph references are found (default ``root``).
    """

    def __init__(
        self,
        root: nn.Module | dict[str, Any],
        train_graph: fx.Graph,
        eval_graph: fx.Graph,
        class_name: str = "GraphModule",
        *,
        eval_root: nn.Module | None = None,
    ) -> None:
        self.__dict__["_condattn_modes"] = None  # plain GraphModule behaviour while it builds
        super().__init__(root, train_graph, class_name)
        if eval_graph is not train_graph:
            for node in eval_graph.nodes:  # the eval graph may reference what train does not
                if node.op in ("call_module", "get_attr") and not _has(self, node.target):
                    _assign(self, node.target, _lookup(eval_root or root, node.target))
            eval_graph.owning_module = self
        self.__dict__["_condattn_modes"] = {True: train_graph, False: eval_graph}
        self._graph = self._condattn_modes[self.training]
        self.recompile()

    # --- the two graphs ------------------------------------------------------------------------

    @property
    def train_graph(self) -> fx.Graph:
        return self._condattn_modes[True]

    @property
    def eval_graph(self) -> fx.Graph:
        return self._condattn_modes[False]

    @property
    def shares_graph(self) -> bool:
        """True when one graph serves both modes (no mode-dependent code was traced)."""
        return self._condattn_modes[True] is self._condattn_modes[False]

    def recompile(self):
        """Compile both graphs; ``forward`` runs the current mode's. After editing ``graph``
        (the current mode's graph), call this as for any ``GraphModule``."""
        modes = self.__dict__.get("_condattn_modes")
        if modes is None:
            return super().recompile()
        modes[self.training] = self._graph  # `gm.graph = g` replaces the current mode's graph
        cls = type(self)
        compiled: dict[bool, tuple[Callable, str, Any]] = {}
        current = self._graph
        try:
            for mode in (True, False):
                graph = modes[mode]
                if mode is False and graph is modes[True]:
                    compiled[False] = compiled[True]
                    continue
                self._graph = graph
                code = super().recompile()
                compiled[mode] = (cls.forward, self._code, code)
        finally:
            self._graph = current
        cls._condattn_forward_train = compiled[True][0]
        cls._condattn_forward_eval = compiled[False][0]
        self.__dict__["_condattn_code"] = {m: c[1] for m, c in compiled.items()}
        if self.shares_graph:
            cls.forward = compiled[True][0]
        else:
            cls.forward = _dispatch
        self._code = compiled[self.training][1]
        return compiled[self.training][2]

    def train(self, mode: bool = True) -> DualGraphModule:
        super().train(mode)
        modes = self.__dict__.get("_condattn_modes")
        if modes is not None:
            self._graph = modes[bool(mode)]
            self._code = self.__dict__["_condattn_code"][bool(mode)]
        return self

    # --- copies and pickles keep both graphs ---------------------------------------------------

    def _deepcopy_init(self) -> Callable[..., None]:
        def init(res: DualGraphModule, fake_mod: nn.Module, _graph: fx.Graph) -> None:
            copied = fake_mod.__dict__["_condattn_modes"]  # deep-copied with the rest
            name = type(self).__name__
            DualGraphModule.__init__(res, fake_mod, copied[True], copied[False], name)
            res.train(self.training)
            _keep_extras(res, fake_mod.__dict__)

        return init

    def __copy__(self) -> DualGraphModule:
        res = DualGraphModule(self, self.train_graph, self.eval_graph, type(self).__name__)
        res.meta = getattr(self, "meta", {})
        res.train(self.training)
        _keep_extras(res, self.__dict__)
        return res

    def __reduce__(self) -> tuple[Any, ...]:
        body = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("_graph", "_condattn_modes", "_condattn_code")
        }
        codes, blocks = {}, []
        for mode in (True, False):
            code = self._condattn_modes[mode].python_code(root_module="self")
            codes[mode] = code.src
            blocks.append(_format_import_block(code.globals, sys_importer))
        return (
            _rebuild,
            (body, "\n".join(blocks), codes[True], codes[False], type(self).__name__),
        )


def _dispatch(self: DualGraphModule, *args: Any, **kwargs: Any) -> Any:
    """The forward of a model whose graphs differ: the current mode's graph."""
    if self.training:
        return self._condattn_forward_train(*args, **kwargs)
    return self._condattn_forward_eval(*args, **kwargs)


@contextlib.contextmanager
def mode_forward(model: nn.Module) -> Iterator[None]:
    """While fx traces ``model`` again (``convert`` of an :func:`condattn.add_attention`
    output): its class's ``forward`` is the current mode's compiled code, not
    :func:`_dispatch`, so the tracer sees that code's signature and globals. Any other model:
    nothing changes."""
    cls = type(model)
    if not isinstance(model, DualGraphModule) or cls.forward is not _dispatch:
        yield
        return
    cls.forward = cls._condattn_forward_train if model.training else cls._condattn_forward_eval
    try:
        yield
    finally:
        cls.forward = _dispatch


def _rebuild(
    body: dict[str, Any], import_block: str, train_code: str, eval_code: str, name: str
) -> DualGraphModule:
    """Unpickle: re-trace each mode's code (as fx does for one graph) and join them."""
    graphs: dict[bool, fx.Graph] = {}
    for mode, code in ((True, train_code), (False, eval_code)):
        if mode is False and eval_code == train_code:
            graphs[False] = graphs[True]
        else:
            graphs[mode] = reduce_graph_module({**body, "_code": code}, import_block).graph
    holder = nn.Module()
    holder.__dict__.update(body)  # every submodule and attribute, as fx's code-only module
    res = DualGraphModule(holder, graphs[True], graphs[False], name)
    res.train(bool(body.get("training", True)))
    _keep_extras(res, body)
    return res


def _keep_extras(res: nn.Module, source: Mapping[str, Any]) -> None:
    """Attributes a graph does not reference (records, the carried face) survive a copy."""
    for k, v in source.items():
        if k not in res.__dict__ and not hasattr(res, k):
            res.__dict__[k] = v
    face = source.get(_FACE)
    if face is not None:
        _install_methods(res, face)


def _lookup(root: nn.Module | Mapping[str, Any], target: str) -> Any:
    if isinstance(root, Mapping):
        return root[target]
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _has(module: nn.Module, target: str) -> bool:
    try:
        _lookup(module, target)
    except AttributeError:
        return False
    return True


def _assign(module: nn.Module, target: str, value: Any) -> None:
    *path, last = target.split(".")
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if isinstance(value, nn.Module):
        module.add_module(last, value)
    elif isinstance(value, nn.Parameter):
        module.register_parameter(last, value)
    elif isinstance(value, torch.Tensor):
        module.register_buffer(last, value)
    else:
        setattr(module, last, value)


def map_graphs(
    model: DualGraphModule, edit: Callable[[fx.Graph], fx.Graph], *, class_name: str
) -> DualGraphModule:
    """A new model over ``model``'s modules whose graphs are ``edit`` of each of its graphs
    (``edit`` gets a copy and returns the graph to use)."""
    train = edit(copy.deepcopy(model.train_graph))
    evl = train if model.shares_graph else edit(copy.deepcopy(model.eval_graph))
    res = DualGraphModule(model, train, evl, class_name)
    res.train(model.training)
    return res


def finish(
    train: fx.GraphModule, evl: fx.GraphModule, *, source: nn.Module, training: bool
) -> DualGraphModule:
    """The last step of a pass over both modes: lint both graphs, :func:`join` them, set the
    source's mode and carry its public face (:func:`carry_face`)."""
    for gm in (train, evl):
        gm.graph.lint()
    res = join(train, evl, class_name=type(source).__name__)
    res.train(training)
    carry_face(res, source)
    return res


def join(train: fx.GraphModule, evl: fx.GraphModule, class_name: str) -> DualGraphModule:
    """Join the two converted graph modules of one model (their submodules are shared); one
    graph serves both modes where their code is the same."""
    tg, eg = train.graph, evl.graph
    same = tg.python_code("self").src == eg.python_code("self").src
    return DualGraphModule(train, tg, tg if same else eg, class_name, eval_root=evl)


# --- the source's public face ------------------------------------------------------------------

_FACE = "_condattn_face"

# methods that keep their meaning after conversion (they only read modules that are still there)
_KEEP = ("get_classifier",)
# what to do instead, for methods of well-known zoos that do not carry over
_INSTEAD = {
    "reset_classifier": "it changes n, which the aux heads and the conditioned attention "
    "depend on: reset the classifier of the source model, then convert it again",
    "forward_features": "the converted forward is one graph: call it on the source model, or "
    "take features of the converted model with torchvision.models.feature_extraction."
    "create_feature_extractor",
    "forward_head": "the converted forward is one graph: use model(x).logits",
    "forward_intermediates": "use torchvision.models.feature_extraction.create_feature_extractor "
    "on the converted model, or call it on the source model",
    "set_grad_checkpointing": "gradient checkpointing is not supported on a converted graph; use "
    "torch.utils.checkpoint around parts of your own training step",
    "reset_parameters": "re-initialise the source model and convert it again",
    "init_weights": "re-initialise the source model and convert it again",
}
_PLAIN = (dict, list, tuple, str, int, float, bool, type(None))


def carry_face(target: fx.GraphModule, source: nn.Module) -> None:
    """Give ``target`` (a conversion of ``source``) the public face users' tools read.

    - Plain public attributes of ``source`` (config dicts, ``num_classes``, ``num_features``,
      ...) are copied, so ``timm.data.resolve_data_config({}, model=converted)`` sees the
      source's input size and normalisation.
    - ``get_classifier`` keeps working (it returns the main classifier, still in the model).
    - Other public methods of the source's class that a ``GraphModule`` lacks stay callable
      and raise ``NotImplementedError`` saying what to use instead, rather than fx's bare
      ``AttributeError`` deep in a user's script.
    """
    for k, v in vars(source).items():
        if k.startswith("_") or k == "training" or k in target.__dict__ or hasattr(target, k):
            continue
        if isinstance(v, _PLAIN):
            target.__dict__[k] = copy.deepcopy(v)
    face: dict[str, Any] = dict(source.__dict__.get(_FACE) or {})  # source converted already
    base = set(dir(fx.GraphModule))
    for name in [] if face else dir(type(source)):
        if name.startswith("_") or name in base:
            continue
        attr = getattr(type(source), name, None)
        if not callable(attr) or isinstance(attr, type):
            continue
        face[name] = attr if name in _KEEP else _INSTEAD.get(name, "")
    target.__dict__[_FACE] = face
    _install_methods(target, face)


def _install_methods(target: nn.Module, face: Mapping[str, Any]) -> None:
    cls = type(target)  # each GraphModule has its own class: this touches only this model
    for name, value in face.items():
        if callable(value):
            setattr(cls, name, value)
        else:
            setattr(cls, name, _refused(name, value))


def _refused(name: str, instead: str) -> Callable[..., Any]:
    def refused(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        hint = instead or "call it on the source model before converting, or convert again"
        raise NotImplementedError(
            f"{name}() of the source model ({type(self).__name__}) does not carry over to a "
            f"condattn-converted model: {hint}."
        )

    refused.__name__ = refused.__qualname__ = name
    return refused
