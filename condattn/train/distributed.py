"""Data parallelism under ``torchrun``: env detection, process group, all-reduce, DDP.

Launch with ``torchrun --nproc_per_node=N -m condattn.cli train RECIPE``. Each rank takes its
contiguous slice of every GLOBAL batch (``optim.batch_size`` is the global batch), gradients are
averaged by DDP and the metric sums are all-reduced, so the logged numbers cover the whole batch.
Only rank 0 writes files.

BatchNorm stays plain (per-rank batch statistics, as torchvision's reference scripts do without
``--sync-bn``), so an N-rank run differs slightly from a 1-rank run of the same global batch:
each BN layer normalises with statistics of ``batch_size / N`` samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistEnv", "all_reduce_sum", "barrier", "cleanup", "setup", "wrap_ddp"]


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    """Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` as set by torchrun (defaults: one process)."""
    try:
        return DistEnv(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as err:
        raise RuntimeError(f"bad torchrun environment variables: {err}") from err


def setup(device: torch.device) -> DistEnv:
    """Initialises the process group when launched by torchrun (NCCL on CUDA, gloo on CPU).

    Returns the environment; a single process gets ``DistEnv()`` and no process group.
    """
    env = detect()
    if env.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return env


def device_for(env: DistEnv, requested: str) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` or the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("system.device='cuda' but torch sees no CUDA device")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sums ``t`` over ranks in place (a no-op for one process) and returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_ddp(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """Wraps in ``DistributedDataParallel`` when there are several ranks (broadcasts rank 0's
    initial weights to the others)."""
    if not env.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
