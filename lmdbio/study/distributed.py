"""PyTorch's own distributed engine for the benchmark: set up from torchrun's environment.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``setup()`` joins the process group,
with the ``gloo`` backend on CPU and ``nccl`` where CUDA is available; otherwise it returns the
single-process context (rank 0 of 1) and every collective below is a no-op. Nothing here is
home-made: rendezvous, collectives and sampling are ``torch.distributed``'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistContext", "setup", "shutdown"]

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (``rank 0 of 1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Global rank 0: gathers and writes the results."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Local rank 0: prepares this node's page cache (each node has its own)."""
        return self.local_rank == 0

    def device(self, requested: str) -> str:
        """``cuda`` -> this rank's GPU (``cuda:LOCAL_RANK``); anything else unchanged."""
        return f"cuda:{self.local_rank}" if requested == "cuda" and self.enabled else requested

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (e.g. a run id all ranks' rows share)."""
        if not self.enabled:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value`` in rank order, on rank 0; ``None`` on the other ranks."""
        if not self.enabled:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out


def setup(backend: str | None = None) -> DistContext:
    """Join torchrun's process group (once per process) and return this rank's context."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)  # the objects of *_object collectives go here
        dist.init_process_group(backend)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local_rank,
                       local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                       backend=str(dist.get_backend()))


def shutdown() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
