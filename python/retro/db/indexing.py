"""The database's vector index: IVF-PQ from the core, searched with exact re-ranking, or exact.

The index stores the chunk embeddings (N, d) with id = chunk number. With an IVF-PQ index a
search scans the nprobe nearest lists and re-scores k * k_factor PQ candidates exactly against the
stored float16 embeddings (8-bit PQ alone caps recall@10 near 0.7 on sentence embeddings).
"Flat" keeps no index file and searches the embeddings exactly. Embeddings are unit-norm, so L2
order is cosine order.

The index is one file, ``index.ivfpq``, or, built with ``shards`` S > 1, the shard directory
``index.shards/`` of :mod:`retro.index.sharding`: S files over the chunk-id ranges
``[s * N // S, (s + 1) * N // S)`` with the same quantizers, searched together with the same
results as the one file (:class:`~retro.index.shard_search.ShardedIndex`; under torchrun each
rank loads its shards only, :class:`~retro.index.shard_search.DistributedIndex`). See
index_build.py for how it is built.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retro.errors import RetroError
from retro.index.factory import index_factory
from retro.index.flat import FlatIndex
from retro.index.ivf_pq import IvfPqIndex
from retro.index.shard_search import DistributedIndex, ShardedIndex
from retro.index.sharding import SHARDS_FILE, shard_file

INDEX_FILE = "index.ivfpq"
SHARDS_DIR = "index.shards"  # the index as shards (IndexParams.shards > 1)
FLAT = "Flat"
AUTO = "auto"
FLAT_BELOW = 4096  # below this many chunks exact search is both faster and exact
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid
K_FACTOR = 4

Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class IndexParams:
    """What the manifest records about the index."""

    spec: str  # "Flat", "IVF<nlist>,PQ<pq_m>" or with OPQ "OPQ<m>[_<d>],IVF<nlist>,PQ<pq_m>"
    nprobe: int  # lists visited per query (IVF only)
    k_factor: int  # PQ candidates per result re-scored exactly (IVF only)
    shards: int = 1  # S: the index as S shards of chunk-id ranges (IVF only)

    @property
    def is_flat(self) -> bool:
        return self.spec == FLAT

    @property
    def files(self) -> list[str]:
        """The index's files relative to the database directory (none for Flat)."""
        if self.is_flat:
            return []
        if self.shards == 1:
            return [INDEX_FILE]
        return [f"{SHARDS_DIR}/{shard_file(s)}" for s in range(self.shards)] + [
            f"{SHARDS_DIR}/{SHARDS_FILE}"
        ]

    def to_json(self) -> dict:
        """The manifest's entry; shards left out at 1, as before sharded databases existed."""
        value = {"spec": self.spec, "nprobe": self.nprobe, "k_factor": self.k_factor}
        return value if self.shards == 1 else {**value, "shards": self.shards}


def choose_index(
    n: int, d: int, spec: str = AUTO, nprobe: int | None = None, shards: int = 1
) -> IndexParams:
    """Index parameters for n vectors of dimension d.

    "auto": Flat below FLAT_BELOW vectors; else nlist = the power of two nearest 4 * sqrt(n) with
    at least MIN_POINTS_PER_LIST vectors per list, pq_m = d / 8 (pq_m bytes per vector), and
    nprobe = nlist / 8 (at least 8). shards: the IVF-PQ index as that many shards (Flat has none).
    """
    if spec == AUTO:
        if n < FLAT_BELOW:
            spec = FLAT
        else:
            nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
            while nlist > 1 and n / nlist < MIN_POINTS_PER_LIST:
                nlist //= 2
            pq_m = max(m for m in range(1, max(1, d // 8) + 1) if d % m == 0)
            spec = f"IVF{nlist},PQ{pq_m}"
    index = index_factory(d, spec)  # validates the description
    if isinstance(index, FlatIndex):
        return IndexParams(FLAT, 0, 0)
    if index.ivf_d % index.pq_m:
        raise RetroError(
            f"index {spec!r}: pq_m={index.pq_m} does not divide the dimension {index.ivf_d}"
        )
    if n < max(index.nlist, 256):
        raise RetroError(
            f"index {spec!r} needs at least max(nlist, 256) = {max(index.nlist, 256)} chunks to "
            f"train; the database has {n}: use a smaller nlist or 'Flat'"
        )
    nprobe = nprobe or max(8, index.nlist // 8)
    return IndexParams(re.sub(r"\s", "", spec), min(nprobe, index.nlist), K_FACTOR, shards)


def exact_searcher(embeddings: np.ndarray) -> Searcher:
    """Exact L2 search over embeddings (N, d) (read into memory as float32)."""
    flat = FlatIndex(embeddings.shape[1], "l2")
    flat.add(np.asarray(embeddings, dtype=np.float32))
    return flat.search


def open_searcher(root: Path, params: IndexParams, embeddings: np.ndarray) -> Searcher:
    """search(x (n, d) float32, k) -> D (n, k) float32, I (n, k) int64 over the database."""
    if params.is_flat:
        return exact_searcher(embeddings)
    if params.shards > 1:
        index: Any = ShardedIndex.load(root / SHARDS_DIR)
    else:
        index = IvfPqIndex.load(root / INDEX_FILE, mmap=True)
    if index.d != embeddings.shape[1]:
        raise ValueError(f"index dimension {index.d} != embedding dimension {embeddings.shape[1]}")
    return _reranked(index, params, embeddings)


def open_distributed_searcher(root: Path, params: IndexParams, embeddings: np.ndarray) -> Searcher:
    """open_searcher for the ranks of a process group together, each holding its shards only
    (params.shards >= ranks). Collective: every rank opens it, and calls each search with the same
    queries and k; every rank gets the full result."""
    return _reranked(DistributedIndex.load(root / SHARDS_DIR), params, embeddings)


def _reranked(index: Any, params: IndexParams, embeddings: np.ndarray) -> Searcher:
    """index's search at params.nprobe, k_factor candidates re-scored against embeddings."""

    def search(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return index.search(x, k, nprobe=params.nprobe, rerank=embeddings, k_factor=params.k_factor)

    return search
