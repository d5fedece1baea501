"""The result-conditioned twin of timm's circular ECA (``CecaModule``)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condattn.nn._common import (
    as_cond,
    check_positive_int,
    cond_dim_of,
    global_avg_pool,
    init_cond_matrix,
    source_channels,
)
from condattn.nn._timm_common import check_timm_source

torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["CondCeca"]


class CondCeca(nn.Module):
    """Circular ECA with a linear map of T added to the gate's pre-activation.

    timm's ``CecaModule`` is ECA whose 1-D conv across channels pads circularly, so the first
    and last channels are neighbours. Like :class:`condattn.nn.CondEca` it has no fc to widen,
    so Eq. 4 becomes

    ``z = avgpool(U)``; ``s = gate(conv1d_k(circpad(z)) + W_T T)``; ``out = s * U``,

    with ``W_T`` of shape ``C x n`` (no bias): an fc over ``[T; z]`` whose z-part is the banded
    circular conv. It gains ``n x C`` parameters.

    Args:
        channels: C.
        cond_dim: n, the length of T.
        kernel_size: k of the 1-D conv (odd).
        bias: whether the conv has a bias (timm adds one when given an ``act_layer``).
        gate_layer: the gate.
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        kernel_size: int = 3,
        bias: bool = False,
        gate_layer: type[nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.channels = check_positive_int("channels", channels)
        self.cond_dim = cond_dim_of(cond_dim)
        self.padding = (kernel_size - 1) // 2  # circular, on each side
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=0, bias=bias)
        self.gate = gate_layer()
        self.cond_fc = nn.Linear(cond_dim, channels, bias=False)  # W_T

    def _scale(self, x: Tensor, cond: Tensor) -> Tensor:
        """The gate s: ``(B, C, 1, 1)``."""
        t = as_cond(cond, x, self.cond_dim)  # (B, n)
        z = global_avg_pool(x).view(x.shape[0], 1, -1)  # Eq. 1: (B, 1, C)
        z = F.pad(z, (self.padding, self.padding), mode="circular")  # (B, 1, C + 2p)
        a = self.conv(z)[:, 0, :] + self.cond_fc(t)  # conv1d_k(circpad(z)) + W_T T: (B, C)
        return self.gate(a)[:, :, None, None]

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return x * self._scale(x, cond)

    @classmethod
    def from_module(
        cls,
        src: nn.Module,
        *,
        cond_dim: int,
        channels: int | None = None,
        init: str = "zeros",
    ) -> CondCeca:
        """Build the twin of a timm ``CecaModule``, copying its conv and gate.

        Args:
            src: the ``CecaModule``.
            cond_dim: n.
            channels: C, which the source does not record (:func:`condattn.convert` passes the
                traced input's channels); required.
            init: ``"zeros"`` (``W_T = 0``: the twin equals ``src`` for any T) or ``"default"``
                (``nn.Linear``'s default for ``W_T``, fan-in n, as :class:`CondEca`).

        Raises:
            TypeError: if ``src`` is not a ``CecaModule`` or its conv is not a 1-channel Conv1d.
            ValueError: if ``channels`` is missing.
        """
        check_timm_source(cls, src, "timm.layers.eca", "CecaModule")
        conv = src.conv
        if not isinstance(conv, nn.Conv1d) or conv.in_channels != 1 or conv.out_channels != 1:
            raise TypeError(f"CecaModule.conv must be a Conv1d(1, 1, k), got {conv}")
        if conv.padding != (0,) or conv.stride != (1,) or conv.dilation != (1,):
            raise TypeError(
                f"CecaModule.conv must have padding=0, stride=1, dilation=1 (the circular padding "
                f"is done outside it), got {conv}"
            )
        c = source_channels(cls, channels, known=None)
        out = cls(
            c,
            cond_dim=cond_dim,
            kernel_size=conv.kernel_size[0],
            bias=conv.bias is not None,
        )
        if out.padding != src.padding:
            raise TypeError(
                f"CecaModule.padding={src.padding} is not (k - 1) / 2 = {out.padding} for k="
                f"{conv.kernel_size[0]}"
            )
        out.conv = copy.deepcopy(conv)
        out.gate = copy.deepcopy(src.gate)
        init_cond_matrix(out.cond_fc.weight, init=init, fan_in=cond_dim)
        return out.to(device=conv.weight.device, dtype=conv.weight.dtype)
