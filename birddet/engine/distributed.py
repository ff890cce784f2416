"""Multi-process training and evaluation under `torchrun` (one process per GPU, or several CPU processes).

`torchrun` sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK` and the rendezvous variables; `init_distributed` reads them,
so a plain `python tools/train.py` is a world of one and the same code path runs everywhere. Rank 0 alone writes
files; validation is sharded across ranks and gathered to rank 0, which evaluates once and broadcasts decisions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from birddet.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: `rank` of `world_size`, the device it owns, and whether we started the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> this process's GPU when there is one, else CPU; an explicit `cuda` without a GPU is an input error."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {preference!r} was asked for but no CUDA GPU is visible; use train.device=cpu")
        if pref == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(pref)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_preference: str = "auto", timeout: timedelta = timedelta(minutes=30)) -> DistContext:
    """Join the process group described by torchrun's environment (gloo on CPU, NCCL on GPU), or run alone.

    Re-uses a group that is already initialised (tests, notebooks) and then leaves it to its owner to destroy.
    `timeout` bounds every collective: training meets every step, so 30 minutes means a rank is stuck; sharded
    prediction meets once at the end and passes a longer one.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not launched_by_torchrun() and not dist.is_initialized():
        return DistContext(device=resolve_device(device_preference, 0))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timeout)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s value on every rank (a best-checkpoint decision, a stop flag)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_lists(items: list[T]) -> list[T]:
    """Concatenate every rank's list, in rank order, on every rank (validation results)."""
    if get_world_size() == 1:
        return list(items)
    parts: list[Any] = [None] * get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def gather_lists_to_main(items: list[T]) -> list[T] | None:
    """Concatenate every rank's list, in rank order, on rank 0 only (None elsewhere): for results only rank 0
    writes, without a copy of everything on every rank."""
    if get_world_size() == 1:
        return list(items)
    parts: list[Any] | None = [None] * get_world_size() if get_rank() == 0 else None
    dist.gather_object(items, parts, dst=0)
    return None if parts is None else [x for part in parts for x in part]


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a small tensor over ranks; a NaN anywhere stays NaN, so every rank sees a divergence together."""
    if get_world_size() == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / get_world_size()


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """Indices of `n` items this rank evaluates: strided, no padding, so no image is counted twice."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return list(range(rank, n, world_size))


def shard_sequence(seq: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    return [seq[i] for i in shard_indices(len(seq), rank, world_size)]


def wrap_model(model: nn.Module, ctx: DistContext, *, find_unused_parameters: bool = False) -> nn.Module:
    """DDP around `model` in a multi-process run, the model itself otherwise.

    Frozen parameters have `requires_grad=False` and DDP ignores them, so `find_unused_parameters` (an extra graph
    walk every step) is only needed for a model with trainable parameters a forward pass can skip.
    """
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
