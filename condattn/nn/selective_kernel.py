"""The result-conditioned twins of timm's Selective Kernel conv and its attention (SKNet)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from condattn.nn._common import (
    as_cond,
    check_positive_int,
    cond_dim_of,
    global_avg_pool,
    load_layer,
    source_channels,
)
from condattn.nn._timm_common import check_timm_source, make_divisible, timm_type

torch.fx.wrap("global_avg_pool")  # traced as one call: its dtype and layout tests need tensors

__all__ = ["CondSelectiveKernel", "CondSelectiveKernelAttn"]


class CondSelectiveKernelAttn(nn.Module):
    """Selective Kernel attention whose reduction reads ``[T; z]`` (Eq. 4 for SKNet).

    The input is the stack of the P path outputs ``V_p``, ``(B, P, C, H, W)``. Fuse:
    ``z = avgpool(sum_p V_p)``, ``(B, C)``. T joins z before the first learned map:
    ``h = act(BN(W_red [T; z]))``; select: ``a = softmax_p(W_sel h)``, returned as
    ``(B, P, C, 1, 1)`` like timm's ``SelectiveKernelAttn``. ``W_red`` gains
    ``n x attn_channels`` parameters.

    Args:
        channels: C, the channels of each path.
        cond_dim: n, the length of T.
        num_paths: P.
        attn_channels: the width of h.
        act_layer: the activation.
        norm_layer: the norm after ``W_red``.
        bias: whether ``W_red`` has a bias (timm: no).
    """

    def __init__(
        self,
        channels: int,
        *,
        cond_dim: int,
        num_paths: int = 2,
        attn_channels: int = 32,
        act_layer: type[nn.Module] = nn.ReLU,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        bias: bool = False,
    ):
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.cond_dim = cond_dim_of(cond_dim)
        self.num_paths = check_positive_int("num_paths", num_paths)
        check_positive_int("attn_channels", attn_channels)
        self.fc_reduce = nn.Conv2d(cond_dim + channels, attn_channels, 1, bias=bias)  # W_red
        self.bn = norm_layer(attn_channels)
        self.act = act_layer()
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, 1, bias=False)  # W_sel

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """``x``: the stacked paths ``(B, P, C, H, W)``; returns ``a``: ``(B, P, C, 1, 1)``."""
        if x.dim() != 5 or x.shape[1] != self.num_paths:
            raise ValueError(
                f"expected the stacked paths (B, {self.num_paths}, C, H, W), got {tuple(x.shape)}"
            )
        t = as_cond(cond, x, self.cond_dim)  # (B, n)
        z = global_avg_pool(x.sum(1))  # fuse, then Eq. 1: (B, C, 1, 1)
        h = self.fc_reduce(torch.cat([t[:, :, None, None], z], dim=1))  # W_red [T; z]
        a = self.fc_select(self.act(self.bn(h)))  # (B, P * C, 1, 1)
        b, pc = a.shape[:2]
        return torch.softmax(a.view(b, self.num_paths, pc // self.num_paths, 1, 1), dim=1)

    @classmethod
    def from_module(
        cls,
        src: nn.Module,
        *,
        cond_dim: int,
        channels: int | None = None,
        init: str = "zeros",
    ) -> CondSelectiveKernelAttn:
        """Build the twin of a timm ``SelectiveKernelAttn``, copying its weights.

        Args:
            src: the ``SelectiveKernelAttn``.
            cond_dim: n.
            channels: C, the channels of each path (checked against the source).
            init: ``"zeros"`` (the twin equals ``src`` for any T) or ``"default"``.

        Raises:
            TypeError: if ``src`` is not a ``SelectiveKernelAttn`` or its ``fc_reduce`` is not a
                1x1, groups=1 conv.
        """
        check_timm_source(cls, src, "timm.layers.selective_kernel", "SelectiveKernelAttn")
        fc = src.fc_reduce
        if fc.kernel_size != (1, 1) or fc.groups != 1 or fc.stride != (1, 1):
            raise TypeError(f"SelectiveKernelAttn.fc_reduce must be a 1x1 groups=1 conv, got {fc}")
        c = source_channels(cls, channels, known=fc.in_channels)
        out = cls(
            c,
            cond_dim=cond_dim,
            num_paths=src.num_paths,
            attn_channels=fc.out_channels,
            bias=fc.bias is not None,
        )
        out.bn = copy.deepcopy(src.bn)
        out.act = copy.deepcopy(src.act)
        out.fc_select = copy.deepcopy(src.fc_select)
        load_layer(out.fc_reduce, fc, cond_dim=cond_dim, init=init)
        return out.to(device=fc.weight.device, dtype=fc.weight.dtype)


class CondSelectiveKernel(nn.Module):
    """A Selective Kernel conv whose attention is :class:`CondSelectiveKernelAttn`.

    The twin of timm's ``SelectiveKernel``, a conv block that contains its attention, so the twin
    replaces the whole block: ``V_p = path_p(U)`` (each path reads its split of U's channels
    when ``split_input``), ``a = softmax_p(W_sel act(BN(W_red [T; avgpool(sum_p V_p)])))``,
    ``out = sum_p a_p * V_p``: ``(B, out_channels, H', W')``, what the source returns.

    Args:
        paths: the P path modules, each mapping its input to ``(B, out_channels, H', W')``.
        in_channels: the channels of U.
        out_channels: C, the channels of each path's output.
        cond_dim: n, the length of T.
        attn_channels: the attention's hidden width (default timm's ``out_channels / 16``,
            rounded to a multiple of 8).
        split_input: split U's channels evenly across the paths.
    """

    def __init__(
        self,
        paths: Sequence[nn.Module],
        *,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        attn_channels: int | None = None,
        split_input: bool = True,
    ):
        super().__init__()
        self.paths = nn.ModuleList(paths)
        self.num_paths = check_positive_int("number of paths", len(self.paths))
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.split_input = split_input
        if split_input and in_channels % self.num_paths:
            raise ValueError(
                f"split_input needs in_channels ({in_channels}) divisible by the number of "
                f"paths ({self.num_paths})"
            )
        self.attn = CondSelectiveKernelAttn(
            out_channels,
            cond_dim=cond_dim,
            num_paths=self.num_paths,
            attn_channels=attn_channels or make_divisible(out_channels / 16, 8),
        )

    def _paths(self, x: Tensor) -> Tensor:
        """The stacked path outputs ``V``: ``(B, P, C, H', W')``."""
        if self.split_input:
            xs = torch.split(x, self.in_channels // self.num_paths, 1)
            return torch.stack([op(xs[i]) for i, op in enumerate(self.paths)], dim=1)
        return torch.stack([op(x) for op in self.paths], dim=1)

    def _scale(self, paths: Tensor, cond: Tensor) -> Tensor:
        """The path weights ``a``, flattened path-major to ``(B, P * C, 1, 1)``.

        Flattened so that the analysis tools see a 4-D gate, as for timm's ``SplitAttn``.
        """
        return self.attn(paths, cond).flatten(1, 2)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        v = self._paths(x)  # (B, P, C, H', W')
        a = self._scale(v, cond).view(v.shape[0], self.num_paths, -1, 1, 1)  # (B, P, C, 1, 1)
        return torch.sum(v * a, dim=1)  # sum_p a_p * V_p: (B, C, H', W')

    @classmethod
    def from_module(
        cls,
        src: nn.Module,
        *,
        cond_dim: int,
        channels: int | None = None,
        init: str = "zeros",
    ) -> CondSelectiveKernel:
        """Build the twin of a timm ``SelectiveKernel``: its paths copied, its attention twinned.

        Args:
            src: the ``SelectiveKernel``.
            cond_dim: n.
            channels: the traced input's channels (checked against ``src.in_channels``).
            init: ``"zeros"`` (the twin equals ``src`` for any T) or ``"default"``.

        Raises:
            TypeError: if ``src`` is not a ``SelectiveKernel`` or its ``attn`` is not timm's
                ``SelectiveKernelAttn``.
        """
        check_timm_source(cls, src, "timm.layers.selective_kernel", "SelectiveKernel")
        attn_type = timm_type("timm.layers.selective_kernel", "SelectiveKernelAttn")
        if not isinstance(src.attn, attn_type):
            raise TypeError(
                f"SelectiveKernel.attn must be timm's SelectiveKernelAttn, got "
                f"{type(src.attn).__name__}"
            )
        c = source_channels(cls, channels, known=src.in_channels)
        out = cls(
            copy.deepcopy(list(src.paths)),
            in_channels=c,
            out_channels=src.out_channels,
            cond_dim=cond_dim,
            attn_channels=src.attn.fc_reduce.out_channels,
            split_input=bool(src.split_input),
        )
        out.attn = CondSelectiveKernelAttn.from_module(
            src.attn, cond_dim=cond_dim, channels=src.out_channels, init=init
        )
        return out
