"""torch.distributed under torchrun: who this process is, and the few collectives training needs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from nanogpt.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistInfo:
    """Rank and world size as torchrun sets them (a plain run is rank 0 of 1)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")),
                    int(os.environ["WORLD_SIZE"]))


def init_distributed(info: DistInfo, device: str) -> str:
    """Join the process group (nccl on CUDA, gloo on CPU); return this rank's device."""
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return device


def cleanup_distributed(together: bool) -> None:
    """Leave the process group. together: every rank got here the same way (the run ended or
    was stopped on all of them), so they first wait for each other: a rank that tears down
    gloo while another still saves the checkpoint can abort ("terminate called without an
    active exception"). After an error no rank waits (the others may never come)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def on_rank0_first(fn: Callable[[], T], dist: DistInfo, device: str, what: str) -> T | None:
    """Run fn on rank 0 while the other ranks wait; return its result there (None elsewhere).

    The wait is a broadcast of rank 0's outcome, so when fn fails every rank ends with an
    error instead of the others waiting in a collective for a rank that has gone.
    """
    if not dist.enabled:
        return fn()
    result, error = None, None
    if dist.is_master:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, once the others know
            error = e
    failed = torch.tensor([int(error is not None)], device=device)
    torch.distributed.broadcast(failed, src=0)
    if error is not None:
        raise error
    if failed.item():
        raise UserError(f"rank 0 failed to {what}; see its error")
    return result


def sum_over_ranks(value: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """value summed over every rank, in place (gloo has no AVG)."""
    if dist.enabled:
        torch.distributed.all_reduce(value)
    return value


def max_over_ranks(value: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if dist.enabled:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return value


def any_rank(flag: bool, dist: DistInfo, device: str) -> bool:
    """True on every rank when flag is True on any (a collective: call it on all ranks)."""
    if not dist.enabled:
        return flag
    return bool(max_over_ranks(torch.tensor([int(flag)], device=device), dist).item())


def rank0_value(value: int, dist: DistInfo, device: str) -> int:
    """Rank 0's value, on every rank (a collective: call it on all ranks)."""
    if not dist.enabled:
        return value
    tensor = torch.tensor([value], device=device)
    torch.distributed.broadcast(tensor, src=0)
    return int(tensor.item())
