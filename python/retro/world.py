"""This process's place among the processes torchrun started: rank, world size, process group.

``torchrun --nproc-per-node N -m retro ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; a command that
can run on several processes (``retro train``, ``retro db build``) joins the process group the
environment describes with :func:`join_world` and leaves it with :func:`leave_world`. Without
those variables (a plain ``retro ...``) the world is this one process, and the helpers here do
nothing. torch is imported only when a group is joined: ``retro db`` runs without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

LAUNCH_VARS = ("RANK", "WORLD_SIZE")  # set by torchrun (and by torch.multiprocessing users)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the process's number on its machine (its GPU)
    distributed: bool = False  # a process group is initialised
    owns_group: bool = False  # this run initialised it (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, progress bars, manifests and checkpoints."""
        return self.rank == 0


def rank_range(n: int, world: World) -> range:
    """This rank's share of items 0 .. n - 1: the rank-th of world.size contiguous ranges, the
    first n % size of them one item longer."""
    per, extra = divmod(n, world.size)
    lo = world.rank * per + min(world.rank, extra)
    return range(lo, lo + per + (world.rank < extra))


def launched() -> bool:
    """Whether torchrun (or another launcher) described a process group in the environment."""
    return all(name in os.environ for name in LAUNCH_VARS)


def join_world(backend: str, timeout: timedelta | None = None) -> World:
    """The process group of this run: an existing one, else the one the environment describes
    (joined here with backend, "gloo" or "nccl"; for NCCL this process takes cuda:LOCAL_RANK),
    else none (World(): a single process)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if _initialized():
        import torch.distributed as dist

        return World(dist.get_rank(), dist.get_world_size(), local_rank, True, False)
    if not launched():
        return World()
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=timeout)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, True, True)


def leave_world(world: World) -> None:
    """Destroys the process group if this run created it."""
    if world.owns_group and _initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def _initialized() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized()


def barrier(world: World) -> None:
    """Waits for every rank (nothing on one process)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(value: Any, world: World) -> Any:
    """Rank 0's value (any picklable object) on every rank."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any, world: World) -> list[Any]:
    """Every rank's value (picklable), in rank order, on every rank."""
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values
