"""Training on several processes: torch.distributed as torchrun starts it, DDP or FSDP2.

``torchrun --nproc-per-node N -m retro train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; the run
then joins the process group (retro.world; gloo on CPU, NCCL on GPU: rank r uses
cuda:LOCAL_RANK) and wraps the
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
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from retro.world import World, join_world
from retro.train.config import PARALLEL


def join_training(device: str) -> World:
    """The process group of a training run (see retro.world): NCCL when the run is on CUDA,
    else gloo."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return join_world("nccl" if cuda else "gloo")


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

