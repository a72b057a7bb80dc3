"""Searches of an index split into shards (:mod:`retro.index.sharding`), merged by (distance, id).

Searching S shards and merging their top-k gives the unsharded index's results exactly (ids and
bit-identical distances): a vector's ADC distance depends only on the query, its list and its code,
which are the same in any shard, and the core orders results by ``(distance, id)`` (smaller id
first on equal distance; for inner product by score, largest first), so the global top-k is the
top-k of the union of the per-shard top-k under that same order (:mod:`retro.index.topk_merge`).
Re-ranking stays exact too: the merge keeps the global top ``k * k_factor`` PQ candidates (the
unsharded candidate set), which the core's :meth:`IvfPqIndex.rerank_candidates` then re-scores as
a re-ranked search does.

- :class:`ShardedIndex`: all shards in one process.
- :class:`DistributedIndex`: under ``torch.distributed`` (gloo or NCCL), rank r holds shards
  r, r + W, r + 2W, ...; queries are broadcast from one rank, each rank merges its shards' top-k,
  the per-rank top-k are all-gathered, each rank merges (and re-ranks) one slice of the queries,
  and the slices are all-gathered, so every rank gets the full result.
- :func:`search_shards`: on a GPU, uploading each shard in turn (or keeping the ones given as
  device indexes, e.g. one per GPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retro._arrays import as_float32_matrix
from retro.index.ivf_pq import IvfPqIndex
from retro.index.sharding import (check_disjoint, check_shards, load_shards, manifest_ranges,
                                  read_manifest)
from retro.index.topk_merge import merge_top_k

if TYPE_CHECKING:
    from retro.index.cuda import CudaIvfPqIndex


@dataclass
class _Candidates:
    """Per-query PQ results before the final selection.

    ids: (n, m) int64, -1 where missing. distances: (n, m) float32 PQ distances as search returns
    them (L2 distance or inner product score). metric: "l2" or "ip".
    """

    ids: np.ndarray
    distances: np.ndarray
    metric: str

    @staticmethod
    def merge(parts: Sequence[_Candidates], m: int) -> _Candidates:
        """The best m columns of each row over all parts, padded with missing results."""
        distances, ids = merge_top_k(
            [p.distances for p in parts], [p.ids for p in parts], m, parts[0].metric
        )
        return _Candidates(ids, distances, parts[0].metric)


@dataclass(frozen=True)
class _Request:
    """A validated search: k results from the top m = k * k_factor candidates when re-ranking."""

    k: int
    nprobe: int
    rerank: Any
    k_factor: int

    @property
    def m(self) -> int:
        return self.k * self.k_factor if self.rerank is not None else self.k


def _request(k: Any, nprobe: Any, rerank: Any, k_factor: Any) -> _Request:
    for name, value in (("k", k), ("nprobe", nprobe), ("k_factor", k_factor)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return _Request(int(k), int(nprobe), rerank, int(k_factor))


class ShardedIndex:
    """Shards of one index searched in one process; results equal the unsharded index's.

    Args:
        shards: trained IvfPqIndexes with the same quantizers (d, metric, nlist, pq_m, centroids)
            and disjoint id ranges, e.g. from :func:`split_index`.
        id_ranges: each shard's (smallest, largest) id, or None if empty; read from the shards'
            ids when not given.
    """

    def __init__(
        self,
        shards: Sequence[IvfPqIndex],
        id_ranges: Sequence[tuple[int, int] | None] | None = None,
    ) -> None:
        self.fingerprint, self.id_ranges = check_shards(shards, id_ranges)
        self.shards = list(shards)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> ShardedIndex:
        """All shards of a shard directory written by :func:`save_shards`."""
        shards, ranges, _ = load_shards(directory, mmap=mmap)
        return cls(shards, ranges)

    d = property(lambda self: self.shards[0].d, doc="Vector dimension.")
    metric = property(lambda self: self.shards[0].metric, doc='"l2" or "ip".')
    ntotal = property(lambda self: sum(s.ntotal for s in self.shards), doc="Vectors in all shards.")

    def search(
        self, x: Any, k: int, nprobe: int = 8, rerank: Any = None, k_factor: int = 4
    ) -> tuple[np.ndarray, np.ndarray]:
        """Searches every shard and merges; arguments and results as :meth:`IvfPqIndex.search`.

        Args:
            x: queries (n, d).
            k: results per query (> 0).
            nprobe: lists visited per query in every shard.
            rerank: optional (N, d) vectors indexed by id (all ids, not a shard's), as in
                :meth:`IvfPqIndex.search`; the result is still the unsharded one.
            k_factor: candidate multiplier for re-ranking.

        Returns:
            D (n, k) float32 and I (n, k) int64, best first; -1 and +inf (L2) or -inf (inner
            product) where fewer than k vectors were found.
        """
        request = _request(k, nprobe, rerank, k_factor)
        x = as_float32_matrix(x, "queries")
        return _finish(self._candidates(x, request), request, x, self.shards[0])

    def _candidates(self, x: np.ndarray, request: _Request) -> _Candidates:
        """The best request.m candidates of x (n, d) over this process's shards."""
        parts = [_shard_candidates(shard, x, request) for shard in self.shards]
        return _Candidates.merge(parts, request.m)

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(n_shards={len(self.shards)}, d={self.d}, metric={self.metric!r}, "
            f"ntotal={self.ntotal})"
        )


def _shard_candidates(shard: IvfPqIndex, x: np.ndarray, request: _Request) -> _Candidates:
    """One shard's best request.m PQ candidates of x (n, d), ordered by (PQ distance, id)."""
    distances, ids = shard.search(x, request.m, nprobe=request.nprobe)
    return _Candidates(ids, distances, shard.metric)


def _finish(
    candidates: _Candidates, request: _Request, x: np.ndarray, index: IvfPqIndex
) -> tuple[np.ndarray, np.ndarray]:
    """Merged candidates of x (n, d) -> (D (n, k) float32, I (n, k) int64) as the unsharded search
    returns them; index is any shard (re-ranking needs only its metric and dimension)."""
    best = _Candidates.merge([candidates], request.m)
    if request.rerank is not None:
        return index.rerank_candidates(x, best.ids, request.k, request.rerank)
    return best.distances, best.ids


class DistributedIndex:
    """A shard directory searched by all ranks of a torch.distributed process group together.

    Rank r of W holds shards r, r + W, r + 2W, ... (S >= W shards). :meth:`load` and :meth:`search`
    are collective: every rank of the group calls them, and every rank gets the full result. The
    collectives are torch.distributed's (gloo on CPU, NCCL on GPU: tensors then go through the
    current CUDA device); the shards themselves are searched on the CPU.
    """

    def __init__(
        self, local: ShardedIndex, id_ranges: Sequence[tuple[int, int] | None], group: Any = None
    ) -> None:
        self.local = local  # this rank's shards
        self.id_ranges = list(id_ranges)  # every shard's, in shard order
        self.group = group

    @classmethod
    def load(
        cls, directory: str | os.PathLike, group: Any = None, mmap: bool = True
    ) -> DistributedIndex:
        """Each rank loads its shards of directory; checks that all ranks see the same shards.

        Any failure (a missing or foreign file, other quantizers, overlapping id ranges, fewer
        shards than ranks) raises ValueError on every rank, naming the ranks that saw it.
        """
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        local: Any = None
        seen: tuple[int, str] | None = None
        ranges: list[tuple[int, int] | None] = []
        try:
            manifest = read_manifest(directory)
            seen = (len(manifest["shards"]), manifest["quantizer_sha256"])
            if seen[0] < world:
                raise ValueError(
                    f"{seen[0]} shards for a world of {world} ranks: every rank needs at least "
                    "one shard (split into a multiple of the world size)"
                )
            ranges = manifest_ranges(manifest)
            check_disjoint(ranges)
            shards, own_ranges, _ = load_shards(directory, range(rank, seen[0], world), mmap=mmap)
            local = ShardedIndex(shards, own_ranges)
            outcome: tuple = ("ok", seen)
        except (ValueError, OSError, RuntimeError) as e:
            outcome = ("error", f"rank {rank}: {e}")
        # One exchange: a failure on any rank fails the load on all, so no rank waits forever.
        outcomes: list[Any] = [None] * world
        dist.all_gather_object(outcomes, outcome, group=group)
        errors = [o[1] for o in outcomes if o[0] == "error"]
        if errors:
            raise ValueError("; ".join(dict.fromkeys(errors)))
        if any(o != outcomes[0] for o in outcomes):
            raise ValueError(
                "ranks see different shard directories (n_shards, quantizer sha256): "
                + str([o[1] for o in outcomes])
            )
        return cls(local, ranges, group)

    @property
    def metric(self) -> str:
        return self.local.metric

    def _check_rerank_rows(self, rerank: Any) -> None:
        """Re-ranking may read row id of rerank for any id of any shard: all must exist."""
        top = max((r[1] for r in self.id_ranges if r is not None), default=-1)
        if rerank is not None and len(rerank) <= top:
            raise ValueError(f"rerank vectors have {len(rerank)} rows but the shards hold id {top}")

    def search(
        self,
        x: Any,
        k: int,
        nprobe: int = 8,
        rerank: Any = None,
        k_factor: int = 4,
        src: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Collective search; arguments and results as :meth:`ShardedIndex.search`.

        Args:
            x: queries (n, d) on rank src (the group rank); ignored (may be None) on other ranks.
            k, nprobe, k_factor: must be the same on every rank (checked: all ranks raise).
            rerank: the (N, d) vectors by id on every rank, or None on every rank.
            src: the rank whose queries are searched.

        Returns:
            On every rank, D (n, k) float32 and I (n, k) int64 equal to the unsharded search.
        """
        import torch
        import torch.distributed as dist

        rank, world = dist.get_rank(self.group), dist.get_world_size(self.group)
        error, request, queries = None, None, None
        try:
            request = _request(k, nprobe, rerank, k_factor)
            if not 0 <= src < world:
                raise ValueError(f"src must be a rank of the group (0..{world - 1}), got {src}")
            if rank == src:
                queries = as_float32_matrix(x, "queries")
                if queries.shape[1] != self.local.d:
                    d = queries.shape[1]
                    raise ValueError(f"queries have d={d}, the index d={self.local.d}")
            self._check_rerank_rows(rerank)
        except ValueError as e:
            error = f"rank {rank}: {e}"
        # One small exchange settles the arguments: a bad one raises on every rank, none hangs.
        settings = (k, nprobe, k_factor, rerank is not None, src)
        header = (error, settings, None if queries is None else queries.shape)
        headers: list[Any] = [None] * world
        dist.all_gather_object(headers, header, group=self.group)
        errors = [h[0] for h in headers if h[0] is not None]
        if errors:
            raise ValueError("; ".join(errors))
        assert request is not None  # no rank failed, so this one made its request
        if any(h[1] != settings for h in headers):
            raise ValueError(
                "ranks passed different (k, nprobe, k_factor, reranking, src): "
                + str([h[1] for h in headers])
            )
        shape = headers[src][2]
        device = _comm_device(self.group)
        buffer = torch.empty(shape, dtype=torch.float32, device=device)
        if rank == src:
            buffer.copy_(torch.from_numpy(queries))
        global_src = src if self.group is None else dist.get_global_rank(self.group, src)
        dist.broadcast(buffer, src=global_src, group=self.group)
        queries = buffer.cpu().numpy()

        local = self.local._candidates(queries, request)
        ids = np.concatenate(_gather(local.ids, self.group, device), 1)  # (n, W * m)
        distances = np.concatenate(_gather(local.distances, self.group, device), 1)
        # Each rank finishes (merges, re-ranks) one slice of the queries, then the slices are
        # gathered: the re-ranking is split over the ranks instead of repeated on each.
        n, rows = len(queries), -(-len(queries) // world)
        mine = slice(min(n, rank * rows), min(n, (rank + 1) * rows))
        distances, labels = _finish(
            _Candidates(ids[mine], distances[mine], self.metric), request, queries[mine],
            self.local.shards[0],
        )
        pad = rows - len(labels)  # the last slices can be short or empty
        distances = np.pad(distances, ((0, pad), (0, 0)))
        labels = np.pad(labels, ((0, pad), (0, 0)))
        return (
            np.concatenate(_gather(distances, self.group, device))[:n],
            np.concatenate(_gather(labels, self.group, device))[:n],
        )


def search_shards(
    shards: Sequence[IvfPqIndex | CudaIvfPqIndex | str | os.PathLike],
    x: Any,
    k: int,
    nprobe: int = 8,
    device: Any = "cuda",
    fp16_lut: bool = False,
) -> tuple[Any, Any]:
    """Searches shards of one index (same quantizers, disjoint ids) and merges their results.

    Args:
        shards: host indexes or index files (uploaded to `device` one at a time and freed, for an
            index larger than the GPU) or device indexes (searched where they are, e.g. one per
            GPU; their results are merged on `device`).
        x, k, nprobe, fp16_lut: as :meth:`retro.index.cuda.CudaIvfPqIndex.search`.

    Returns:
        D (n, k), I (n, k) as one index holding every shard's vectors would return them; numpy for
        numpy queries, else tensors on x's device.
    """
    import torch

    from retro.index.cuda import CudaIvfPqIndex, cuda_device, results_for

    if not shards:
        raise ValueError("search_shards needs at least one shard")
    target = cuda_device(device)
    kind = "numpy" if not isinstance(x, torch.Tensor) else ("device" if x.is_cuda else "cpu")
    x_dev = torch.as_tensor(as_float32_matrix(x, "queries")) if kind == "numpy" else x
    parts_d, parts_i, metric = [], [], None
    for shard in shards:
        if isinstance(shard, (str, os.PathLike)):
            shard = IvfPqIndex.load(shard, mmap=True)
        gpu = shard if isinstance(shard, CudaIvfPqIndex) else CudaIvfPqIndex(shard, target)
        if metric is not None and gpu.metric != metric:
            raise ValueError(f"shards mix metrics {metric!r} and {gpu.metric!r}")
        metric = gpu.metric
        d, i = gpu.search(x_dev.to(gpu.device), k, nprobe=nprobe, fp16_lut=fp16_lut)
        parts_d.append(d.to(target))
        parts_i.append(i.to(target))
        del gpu  # an uploaded host shard is freed before the next one
    assert metric is not None  # shards is not empty
    return results_for(*merge_top_k(parts_d, parts_i, k, metric), kind)


def _comm_device(group: Any) -> Any:
    """Where collective tensors live: the current CUDA device for NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather(array: np.ndarray, group: Any, device: Any) -> list[np.ndarray]:
    """All-gathers one (n, m) array of equal shape on every rank: W arrays, in rank order."""
    import torch
    import torch.distributed as dist

    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, tensor, group=group)
    return [t.cpu().numpy() for t in out]
