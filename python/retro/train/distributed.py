"""Training on several processes: torch.distributed as torchrun starts it, DDP or FSDP2.

``torchrun --nproc-per-node N -m retro train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; the run
then joins the process group (gloo on CPU, NCCL on GPU: rank r uses cuda:LOCAL_RANK) and wraps the
model in DistributedDataParallel (``parallel="ddp"``, the default) or shards it with FSDP2
(``parallel="fsdp"``: ``fully_shard`` on every transformer block, then on the whole model).

``batch_size`` is each rank's micro-batch, so one optimizer step reads a global batch of
``batch_size * world_size * grad_accum`` samples. Global micro-batch g is positions
``[g * B * W, (g + 1) * B * W)`` of the seeded sample order and rank r reads its slice
``[g * B * W + r * B, g * B * W + (r + 1) * B)``: a run on W ranks sees the samples of a 1-rank run
with batch_size B * W in the same order, and its averaged gradients and losses are that run's, up
to floating-point summation order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from retro.train.config import PARALLEL

LAUNCH_VARS = ("RANK", "WORLD_SIZE")  # set by torchrun (and by torch.multiprocessing users)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the process's number on its machine (its GPU)
    distributed: bool = False  # a process group is initialised
    owns_group: bool = False  # this run initialised it (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, progress and the canonical checkpoint."""
        return self.rank == 0


def join_world(device: str) -> World:
    """The process group of this run: an existing one, the one torchrun's environment describes
    (joined here: NCCL when device is CUDA, else gloo), or none (a single process)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _local_rank(), True, False)
    if not all(name in os.environ for name in LAUNCH_VARS):
        return World()
    backend = "nccl" if _wants_cuda(device) else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_local_rank())
    dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), _local_rank(), True, True)


def leave_world(world: World) -> None:
    """Destroys the process group if this run created it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for a CUDA run under torchrun, else device."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def parallel_mode(parallel: str, world: World) -> str | None:
    """"ddp", "fsdp" or None (a single process: the model is used as it is)."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, not {parallel!r}")
    if not world.distributed:
        return None
    return "ddp" if parallel == "auto" else parallel


def wrap_model(model: nn.Module, mode: str | None, device: torch.device) -> nn.Module:
    """model (on device, requires_grad set) for data-parallel training.

    ddp: DistributedDataParallel (gradients all-reduced, averaged). fsdp: FSDP2, every decoder
    and encoder block its own unit (all-gathered for its forward and backward, resharded after),
    then the root (embeddings, tied head, final norms). None: model itself.
    """
    if mode is None:
        return model
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    blocks = list(model.transformer.h) + (list(model.encoder.h) if model.encoder else [])
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards the module in place)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within: backward passes reduce gradients across ranks only if enabled (the last micro-batch
    of an accumulation; the others accumulate locally)."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield


def rank_slices(order: Iterable[int], batch_size: int, world: World) -> Iterator[int]:
    """This rank's samples of a global order: of each run of batch_size * world.size positions,
    the rank's batch_size (see the module docstring); the last short run is split the same way."""
    group, span = [], batch_size * world.size
    lo, hi = world.rank * batch_size, (world.rank + 1) * batch_size
    for j in order:
        group.append(j)
        if len(group) == span:
            yield from group[lo:hi]
            group = []
    yield from group[lo:hi]


def rank_batches(indices: Sequence[int], batch_size: int, world: World) -> list[list[int]]:
    """This rank's batches of a finite list of samples (validation): global batch g is
    indices[g * B * W : (g + 1) * B * W], rank r's part the r-th B of it (possibly empty)."""
    span = batch_size * world.size
    lo, hi = world.rank * batch_size, (world.rank + 1) * batch_size
    return [list(indices[g:g + span][lo:hi]) for g in range(0, len(indices), span)]


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """values (any shape, float64 on the CPU) summed over all ranks (itself on one process)."""
    if not world.distributed:
        return values
    device = torch.device("cuda", world.local_rank) if dist.get_backend() == "nccl" else "cpu"
    total = values.to(device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.cpu()


def mean_over_ranks(value: float, world: World) -> float:
    """The mean of a float over all ranks (every rank gets it)."""
    total = sum_over_ranks(torch.tensor([value], dtype=torch.float64), world)
    return float(total[0]) / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()

