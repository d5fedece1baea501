"""FiLM conditioning of an attention gate: condattn's ``cond_mode="film"`` (not the paper's).

The paper concatenates T with the squeezed descriptor (Eq. 4: ``s = σ(W2 δ(W1 [T; z]))``), so T
acts as a per-sample bias *before* the hidden layer. FiLM (Perez et al. 2018) lets T scale and
shift the gate's pre-activation instead, *after* the block's own maps::

    s = gate(γ(T) ⊙ a + β(T)),   a = the block's gate pre-activation (for SE, W2 δ(W1 z)),
    γ(T) = 1 + W_γ T,   β(T) = W_β T,   [W_γ; W_β]: one Linear(n, 2C) with bias.

With ``init="zeros"`` the Linear is zero, so γ = 1 and β = 0 and the twin computes its
source's function exactly, as the concat twins do. The option answers the question "does the
way T enters matter?" beside SE-R's concat.

:class:`CondFilm` is one twin for every attention type whose gate is a module called on a
pre-activation with C channels (SE, ECA, CBAM's channel gate, coordinate attention's two gates,
gather-excite, global context's scale gate, torchvision's and timm's SE variants): it holds a
copy of the source block whose gate is wrapped by :class:`FilmGate`. The transform layer's table
(:func:`condattn.transform.mappings.film_gate`) names the gate of each type, and the reason
where a type has none.
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from condattn.nn._common import as_cond, check_init, check_positive_int, cond_dim_of

__all__ = ["CondFilm", "FilmGate"]


class FilmGate(nn.Module):
    """Wraps a block's gate: ``gate(γ ⊙ a + β)`` with the γ, β of the current call.

    ``γ - 1`` and ``β`` are set by :class:`CondFilm` for the duration of one forward (they exist
    only while the block runs); the outputs of the gate are kept when ``record`` is on (for
    :meth:`CondFilm._scale`).
    """

    def __init__(self, gate: nn.Module | Callable[[Tensor], Tensor]):
        super().__init__()
        self.gate = gate
        self._film: tuple[Tensor, Tensor] | None = None
        self._record: list[Tensor] | None = None

    def forward(self, a: Tensor) -> Tensor:
        if self._film is None:
            raise RuntimeError(
                "a FiLM-conditioned gate ran without T: call its CondFilm block with (x, cond)"
            )
        dg, beta = self._film  # (B, C) each
        b, c = dg.shape
        if a.dim() >= 2 and a.shape[:2] == (b, c):  # (B, C, ...): SE, CBAM, coordinate, GE
            view = (b, c, *([1] * (a.dim() - 2)))
        elif a.dim() == 3 and a.shape == (b, 1, c):  # (B, 1, C): the ECA family's conv1d
            view = (b, 1, c)
        else:
            raise ValueError(
                f"FiLM expects the gate's input to be (batch, C, ...) or (batch, 1, C) with "
                f"(batch, C) = {(b, c)}, got {tuple(a.shape)}"
            )
        s = self.gate(a * (1 + dg.view(view)) + beta.view(view))
        if self._record is not None:
            self._record.append(s)
        return s


class CondFilm(nn.Module):
    """FiLM twin of an attention block: T scales and shifts its gate's pre-activation.

    Args:
        block: the source attention block (copied; not modified).
        gate: the dotted path of its gate module inside ``block`` (e.g. ``"gate"``,
            ``"channel.gate"``, ``"scale_activation"``).
        channels: C, the channels of the gate's input.
        cond_dim: n, the width of T.
        init: ``"zeros"`` (γ = 1, β = 0: the source's function) or ``"default"`` (PyTorch's
            Linear init for ``W_γ, W_β``; their bias starts at zero).
    """

    def __init__(
        self, block: nn.Module, *, gate: str, channels: int, cond_dim: int, init: str = "zeros"
    ):
        super().__init__()
        check_init(init)
        self.cond_dim = cond_dim_of(cond_dim)
        self.channels = check_positive_int("channels", channels)
        self.gate_path = gate
        self.block = copy.deepcopy(block)
        *parent, name = gate.split(".")
        owner = self.block.get_submodule(".".join(parent)) if parent else self.block
        inner = getattr(owner, name, None)
        if inner is None or not callable(inner):
            raise ValueError(f"{type(block).__name__} has no gate {gate!r} to condition")
        setattr(owner, name, FilmGate(inner))
        self.film = nn.Linear(self.cond_dim, 2 * self.channels)  # [W_γ; W_β] T + [b_γ; b_β]
        with torch.no_grad():
            if init == "zeros":
                self.film.weight.zero_()
            self.film.bias.zero_()

    @property
    def film_gate(self) -> FilmGate:
        return self.block.get_submodule(self.gate_path)

    def _run(self, x: Tensor, cond: Tensor, *, record: bool) -> tuple[Any, list[Tensor]]:
        t = as_cond(cond, x, self.cond_dim)
        dg, beta = self.film(t).chunk(2, dim=1)  # γ - 1, β: (B, C) each
        g = self.film_gate
        g._film, g._record = (dg, beta), ([] if record else None)
        try:
            return self.block(x), g._record or []
        finally:
            g._film, g._record = None, None

    def forward(self, x: Tensor, cond: Tensor) -> Any:
        return self._run(x, cond, record=False)[0]

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The conditioned gate's output (the product of its calls: coordinate attention gates
        rows and columns), for the analysis tools."""
        return functools.reduce(operator.mul, self._run(x, cond, record=True)[1])

    @classmethod
    def from_module(
        cls,
        src: nn.Module,
        *,
        gate: str,
        cond_dim: int,
        channels: int | None = None,
        init: str = "zeros",
    ) -> CondFilm:
        if channels is None:
            raise ValueError("CondFilm.from_module: pass channels= (C of the gate's input)")
        return cls(src, gate=gate, channels=channels, cond_dim=cond_dim, init=init)

    def extra_repr(self) -> str:
        return f"gate={self.gate_path!r}, channels={self.channels}, cond_dim={self.cond_dim}"
