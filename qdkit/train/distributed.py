"""Distributed training plumbing: where this process sits in a torchrun job, the process group's
lifetime and the few collectives the trainer needs. `launch()`, which starts torchrun for
`qdkit train --nproc N` (in qdkit.train.launcher).

The rules that keep a DistributedDataParallel job from hanging, and where they are kept:
- every rank takes the same number of steps: the trainer's loader drops the last partial global
  batch (qdkit.train.run), so each step every rank has a non-empty shard;
- whatever ends the loop early (a NaN, Ctrl-C, a setup error on any rank) is agreed through a
  collective (`any_flags`, `agree`), so all ranks stop at the same step and raise the same error;
- only rank 0 writes files or prints; the others stay silent (qdkit.cli exits them quietly).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from qdkit.errors import QdkitError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job; (0, 1, 0, 1) for a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True once this process is in an initialised process group of several ranks."""
        return self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def dist_info() -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return DistInfo(
        int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world))
    )


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[DistInfo]:
    """Join torchrun's process group for the duration of the block (NCCL on CUDA, gloo on CPU) and
    destroy it on the way out, whatever happens. A no-op for a single process or an existing group."""
    if info.world_size <= 1 or torch.distributed.is_initialized():
        yield info
        return
    if not torch.distributed.is_available():
        raise QdkitError(f"WORLD_SIZE={info.world_size}, but this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL: one GPU per process
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    try:
        yield info
        # Leave together: a rank that tears gloo down while a peer still talks to it gets aborted.
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- collectives


def all_reduce_(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `t` over the ranks in place (nothing to do in a single process)."""
    if info.active:
        torch.distributed.all_reduce(t)
    return t


def any_flags(flags: list[bool], info: DistInfo, device: torch.device) -> list[bool]:
    """For each flag: is it set on any rank? One all-reduce for all of them."""
    if not info.active:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    torch.distributed.all_reduce(t)
    return [bool(v > 0) for v in t.tolist()]


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's `value` on every rank (picklable objects: strings, tuples, state dicts)."""
    if not info.active:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value: Any, info: DistInfo) -> list[Any]:
    """Every rank's `value`, in rank order."""
    if not info.active:
        return [value]
    out: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(out, value)
    return out


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank's buffers (batch-norm running statistics) rank 0's, which are the ones its
    checkpoint saves. DDP broadcasts them at the start of each forward, so after the last training
    step of an epoch each rank still holds its own last update."""
    if info.active:
        for buf in module.buffers():
            torch.distributed.broadcast(buf, src=0)


def agree(error: BaseException | None, info: DistInfo) -> None:
    """Raise on every rank if any rank failed (`error` is this rank's, or None).

    Under DDP a QdkitError on one rank alone would leave the others waiting in the next collective;
    here all ranks raise the same error together: rank 0 its own, or the first failing rank's message
    prefixed with `rank N:`. In a single process: just raise `error`.
    """
    if not info.active:
        if error is not None:
            raise error
        return
    messages = all_gather_object(None if error is None else str(error), info)
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if not failed:
        return
    if error is not None and info.is_main:
        raise error
    rank, message = failed[0]
    raise QdkitError(message if rank == 0 else f"rank {rank}: {message}") from error
