"""The IVF-PQ index as S shards: disjoint id ranges, the same trained quantizers, merged searches.

A shard is an ordinary :class:`retro.IvfPqIndex` (saved in the index's own atomic, checksummed
file format) holding the vectors whose ids fall in its range ``[id_lo, id_hi]``; every shard has
the coarse and PQ centroids of the index it was split from. A shard directory holds the shard files
``shard-00000.ivfpq`` ... and ``shards.json`` (their order, id ranges and a quantizer fingerprint).

Searching S shards and merging their top-k gives the unsharded index's results exactly (ids and
bit-identical distances): a vector's ADC distance depends only on the query, its list and its code,
which are the same in any shard, and the core orders results by ``(distance, id)`` (smaller id
first on equal distance; for inner product by score, largest first), so the global top-k is the
top-k of the union of the per-shard top-k under that same order (:mod:`retro.topk_merge`).
Re-ranking stays exact too: the merge keeps the global top ``k * k_factor`` PQ candidates (the
unsharded candidate set), which the core's :meth:`IvfPqIndex.rerank_candidates` then re-scores as
a re-ranked search does.

- :func:`split_index` / :func:`save_shards` / :func:`shard_index`: make and write shards.
- :class:`ShardedIndex`: all shards in one process.
- :class:`DistributedIndex`: under ``torch.distributed`` (gloo or NCCL), rank r holds shards
  r, r + W, r + 2W, ...; queries are broadcast from one rank, each rank merges its shards' top-k,
  the per-rank top-k are all-gathered, each rank merges (and re-ranks) one slice of the queries,
  and the slices are all-gathered, so every rank gets the full result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retro._arrays import as_float32_matrix
from retro.db.files import write_json_atomically
from retro.index import IvfPqIndex
from retro.topk_merge import merge_top_k

SHARDS_FILE = "shards.json"
FORMAT = "retro-ivfpq-shards"
VERSION = 1


def shard_file(shard: int) -> str:
    """File name of shard number ``shard`` inside a shard directory."""
    return f"shard-{shard:05d}.ivfpq"


def quantizer_fingerprint(index: IvfPqIndex) -> str:
    """Hex sha256 of what must be equal across shards: metric, d, pq_bits, whether the PQ codes
    residuals, the OPQ rotation (if any) and both centroid sets."""
    if not index.is_trained:
        raise ValueError(f"the index is not trained: {index!r}")
    digest = hashlib.sha256(f"{index.metric} {index.d} {index.pq_bits} {index.by_residual}".encode())
    if index.opq_m:  # indexes without OPQ keep the fingerprints they had before OPQ existed
        digest.update(f" OPQ{index.opq_m}_{index.ivf_d}".encode())
        digest.update(np.ascontiguousarray(index.rotation()).tobytes())
    digest.update(np.ascontiguousarray(index.coarse_centroids()).tobytes())
    digest.update(np.ascontiguousarray(index.pq_centroids()).tobytes())
    return digest.hexdigest()


def _all_ids(index: IvfPqIndex) -> np.ndarray:
    """(ntotal,) int64: every stored id, list by list."""
    parts = [index.list_ids(list_no) for list_no in range(index.nlist)]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def id_range(index: IvfPqIndex) -> tuple[int, int] | None:
    """(smallest, largest) stored id, or None for an empty index (reads every id once)."""
    ids = _all_ids(index)
    return (int(ids.min()), int(ids.max())) if len(ids) else None


def equal_count_bounds(index: IvfPqIndex, n_shards: int) -> np.ndarray:
    """(n_shards - 1,) int64 cut points that give shards of about ntotal / n_shards vectors.

    Shard s takes the ids in ``[bounds[s-1], bounds[s])`` (the first from -inf, the last to +inf),
    so a repeated id never straddles two shards; shards can be empty when ntotal < n_shards.
    """
    ids = np.sort(_all_ids(index))
    if len(ids) == 0:
        return np.zeros(n_shards - 1, np.int64)
    cuts = np.arange(1, n_shards) * len(ids) // n_shards
    return ids[np.minimum(cuts, len(ids) - 1)]


def split_index(
    index: IvfPqIndex, n_shards: int, bounds: Sequence[int] | np.ndarray | None = None
) -> list[IvfPqIndex]:
    """Splits a trained index into n_shards indexes with disjoint id ranges and its quantizers.

    Args:
        index: a trained IvfPqIndex (it is not modified).
        n_shards: S >= 1.
        bounds: (S - 1,) non-decreasing int64 cut points: shard s holds the ids in
            ``[bounds[s-1], bounds[s])``, the first from -inf and the last to +inf. Default:
            :func:`equal_count_bounds`.

    Returns:
        S in-memory indexes; list l of shard s holds list l's codes whose ids are in its range, in
        their original order. (:func:`shard_index` holds one shard at a time instead.)
    """
    cuts = _cut_points(index, n_shards, bounds)
    return [_shard(index, cuts, s) for s in range(n_shards)]


def _cut_points(
    index: IvfPqIndex, n_shards: int, bounds: Sequence[int] | np.ndarray | None
) -> np.ndarray:
    """(n_shards - 1,) int64 validated cut points (see :func:`split_index`)."""
    if not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
        raise ValueError(f"n_shards must be a positive integer, got {n_shards!r}")
    if not index.is_trained:
        raise ValueError(f"only a trained index can be split: {index!r}")
    if bounds is None:
        return equal_count_bounds(index, int(n_shards))
    cuts = np.asarray(bounds)
    if cuts.dtype.kind not in "iu" or cuts.shape != (n_shards - 1,):
        raise ValueError(
            f"bounds must be {n_shards - 1} integers (n_shards - 1), got {cuts.dtype} of "
            f"shape {cuts.shape}"
        )
    if np.any(np.diff(cuts.astype(np.int64)) < 0):
        raise ValueError(f"bounds must be non-decreasing, got {cuts.tolist()}")
    return cuts.astype(np.int64)


def _shard(index: IvfPqIndex, cuts: np.ndarray, s: int) -> IvfPqIndex:
    """Shard s of index under cuts: the codes of the ids in [cuts[s-1], cuts[s]), list by list."""
    shard = IvfPqIndex.from_trained(
        index.coarse_centroids(), index.pq_centroids(), metric=index.metric, seed=index.seed,
        by_residual=index.by_residual, rotation=index.rotation(), opq_m=index.opq_m or None,
    )
    for list_no in range(index.nlist):
        ids = index.list_ids(list_no)
        rows = np.searchsorted(cuts, ids, side="right") == s  # the shard of each id
        if rows.any():
            shard.add_encoded(list_no, index.list_codes(list_no)[rows], ids[rows])
    return shard


def save_shards(shards: Sequence[IvfPqIndex], directory: str | os.PathLike) -> Path:
    """Writes shards (validated as by :class:`ShardedIndex`) and ``shards.json`` to directory.

    Each shard file is written atomically by :meth:`IvfPqIndex.save`, and the manifest last, so a
    directory with a manifest is complete. Returns the manifest's path.
    """
    sharded = ShardedIndex(shards)
    return _write_shards(iter(sharded.shards), sharded.fingerprint, directory)


def shard_index(
    index: IvfPqIndex,
    n_shards: int,
    directory: str | os.PathLike,
    bounds: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """:func:`split_index` + :func:`save_shards`, holding one shard in memory at a time (index
    itself can be memory-mapped); returns the manifest's path."""
    cuts = _cut_points(index, n_shards, bounds)
    shards = (_shard(index, cuts, s) for s in range(n_shards))
    return _write_shards(shards, quantizer_fingerprint(index), directory)


def _write_shards(
    shards: Iterator[IvfPqIndex], fingerprint: str, directory: str | os.PathLike
) -> Path:
    """Saves each shard as it comes, then ``shards.json`` (last: its presence means complete)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for s, shard in enumerate(shards):
        shard.save(root / shard_file(s))
        entries.append(shard_entry(s, shard))
    return write_shards_manifest(root, entries, shard, fingerprint)


def shard_entry(s: int, shard: IvfPqIndex) -> dict:
    """Shard s's entry in ``shards.json``: its file, vector count and id range (reads its ids)."""
    ids = id_range(shard)
    return {
        "file": shard_file(s),
        "ntotal": int(shard.ntotal),
        "id_lo": None if ids is None else ids[0],
        "id_hi": None if ids is None else ids[1],
    }


def write_shards_manifest(
    directory: str | os.PathLike, entries: Sequence[dict], like: IvfPqIndex, fingerprint: str
) -> Path:
    """Writes ``shards.json`` once every shard file of entries (:func:`shard_entry`, in shard
    order) is saved in directory; like is any of the shards. Returns its path."""
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "d": like.d,
        "nlist": like.nlist,
        "pq_m": like.pq_m,
        "pq_bits": like.pq_bits,
        "metric": like.metric,
        "quantizer_sha256": fingerprint,
        "shards": list(entries),
    }
    path = Path(directory) / SHARDS_FILE
    write_json_atomically(path, manifest)
    return path


def read_manifest(directory: str | os.PathLike) -> dict:
    """The ``shards.json`` of a shard directory, checked for its format and version."""
    path = Path(directory) / SHARDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a shard directory (see retro.sharding)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    return manifest


def load_shards(
    directory: str | os.PathLike,
    which: Sequence[int] | None = None,
    mmap: bool = True,
    check_ids: bool = True,
) -> tuple[list[IvfPqIndex], list[tuple[int, int] | None], dict]:
    """Loads shards ``which`` (default: all) of a shard directory.

    Returns the shards, their id ranges from the manifest, and the manifest. Each shard's
    quantizers and vector count are checked against the manifest, and with check_ids its id range
    too (one read of its ids, 8 bytes a vector: a shard file swapped for another is caught).
    """
    root = Path(directory)
    manifest = read_manifest(root)
    entries = manifest["shards"]
    which = range(len(entries)) if which is None else which
    shards, ranges = [], []
    all_ranges = _manifest_ranges(manifest)
    for s in which:
        entry = entries[s]
        shard = IvfPqIndex.load(root / entry["file"], mmap=mmap)
        if quantizer_fingerprint(shard) != manifest["quantizer_sha256"]:
            raise ValueError(f"{root / entry['file']}: quantizers differ from {SHARDS_FILE}'s")
        if shard.ntotal != entry["ntotal"]:
            raise ValueError(
                f"{root / entry['file']} holds {shard.ntotal} vectors, {SHARDS_FILE} says "
                f"{entry['ntotal']}"
            )
        path, expected = root / entry["file"], all_ranges[s]
        if check_ids and (found := id_range(shard)) != expected:
            raise ValueError(f"{path} holds ids {found}, {SHARDS_FILE} says {expected}")
        shards.append(shard)
        ranges.append(expected)
    return shards, ranges, manifest


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
        if len(shards) == 0:
            raise ValueError("a ShardedIndex needs at least one shard")
        for s, shard in enumerate(shards):
            if not isinstance(shard, IvfPqIndex):
                raise ValueError(f"shard {s} is a {type(shard).__name__}, not an IvfPqIndex")
        fingerprints = [quantizer_fingerprint(shard) for shard in shards]
        for s, (shard, fingerprint) in enumerate(zip(shards, fingerprints)):
            if fingerprint != fingerprints[0]:
                raise ValueError(
                    f"shard {s} ({shard!r}) has other trained quantizers than shard 0 "
                    f"({shards[0]!r}): shards must be split from one trained index"
                )
        if id_ranges is None:
            id_ranges = [id_range(shard) for shard in shards]
        if len(id_ranges) != len(shards):
            raise ValueError(f"{len(id_ranges)} id ranges for {len(shards)} shards")
        check_disjoint(id_ranges)
        self.shards = list(shards)
        self.id_ranges = list(id_ranges)
        self.fingerprint = fingerprints[0]

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


def check_disjoint(id_ranges: Sequence[tuple[int, int] | None]) -> None:
    """Raises ValueError if two shards' (smallest, largest) id ranges overlap."""
    present = sorted((r[0], r[1], s) for s, r in enumerate(id_ranges) if r is not None)
    for (_, hi, s), (lo, _, t) in zip(present, present[1:]):
        if lo <= hi:
            raise ValueError(
                f"shards {s} and {t} have overlapping id ranges {list(id_ranges[s])} and "
                f"{list(id_ranges[t])}: shards must hold disjoint id ranges"
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
            ranges = _manifest_ranges(manifest)
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


def _manifest_ranges(manifest: dict) -> list[tuple[int, int] | None]:
    """Each shard's (smallest, largest) id from shards.json, None for an empty shard."""
    entries = manifest["shards"]
    return [None if e["id_lo"] is None else (int(e["id_lo"]), int(e["id_hi"])) for e in entries]


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
