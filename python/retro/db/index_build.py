"""The database's IVF-PQ index, built by the ranks of a build together (or by one process).

1. Rank 0 trains the quantizers on a seeded sample of the embeddings and saves the trained, empty
   index (``index.trained.ivfpq``); every rank loads it.
2. Every rank encodes its range of ENCODE_BLOCK-row blocks of the embeddings (each chunk's coarse
   list and PQ code) into ``index.lists.npy`` (N,) int64 and ``index.codes.npy`` (N, pq_m) uint8,
   block by block and resumably (:class:`retro.db.blocks.BlockWriter`).
3. Shard s of S (the one index file when S = 1) is the trained index plus the codes of its chunk
   ids ``[s * N // S, (s + 1) * N // S)``; rank r writes shards r, r + W, ... (the ones
   :class:`retro.index.shard_search.DistributedIndex` loads on it), rank 0 writes
   ``shards.json`` and removes the intermediate files.

The files equal those of one ``add`` of all embeddings in id order, on any number of ranks: the
core assigns and encodes rows in groups of CODE_GROUP starting at multiples of CODE_GROUP of its
input, and blocks start at multiples of ENCODE_BLOCK (a multiple of CODE_GROUP), so every code is
computed in the same group of rows as in one call; ``add_preassigned`` groups the codes by list
with a stable counting sort, so each list holds its ids in increasing order either way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from retro.db.blocks import BlockWriter
from retro.db.indexing import INDEX_FILE, SHARDS_DIR, IndexParams
from retro.index.factory import index_factory
from retro.index.ivf_pq import IvfPqIndex
from retro.index.sharding import (quantizer_fingerprint, shard_entry, shard_file,
                                  write_shards_manifest)
from retro.world import World, barrier

TRAIN_SAMPLE = 65536  # training rows at most (the PQ's k-means wants 256 per centroid)
CODE_GROUP = 256  # rows the core's nearest-centroid search takes at a time (distances.cpp kRows)
ENCODE_BLOCK = CODE_GROUP  # rows per resumable block of the encoding
TRAINED_FILE = "index.trained.ivfpq"
ENCODED_FILES = {"lists": "index.lists.npy", "codes": "index.codes.npy"}


def train_index(params: IndexParams, embeddings: np.ndarray, seed: int) -> IvfPqIndex:
    """An empty IVF-PQ index trained on a seeded sample of embeddings (N, d) float16."""
    n, d = embeddings.shape
    index = index_factory(d, params.spec, metric="l2", seed=seed)
    assert isinstance(index, IvfPqIndex)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, TRAIN_SAMPLE), replace=False))
    index.train(np.asarray(embeddings[sample], dtype=np.float32))
    return index


def encode(scratch: IvfPqIndex, x: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray]:
    """The coarse list (n,) int64 and PQ codes (n, pq_m) uint8 of x (n, d) float32, rows
    first .. first + n - 1, as ``add`` computes them (scratch: a trained index, emptied here)."""
    scratch.reset()
    scratch.add(x, np.arange(first, first + len(x), dtype=np.int64))
    list_of = np.empty(len(x), dtype=np.int64)
    codes = np.empty((len(x), scratch.pq_m), dtype=np.uint8)
    for list_no in map(int, np.flatnonzero(scratch.list_sizes())):
        rows = scratch.list_ids(list_no) - first
        list_of[rows] = list_no
        codes[rows] = scratch.list_codes(list_no)
    return list_of, codes


def shard_bounds(n: int, n_shards: int, s: int) -> tuple[int, int]:
    """Chunk ids [lo, hi) of shard s of n_shards over n chunks (equal counts, as
    :func:`retro.index.sharding.equal_count_bounds` cuts ids 0 .. n - 1)."""
    return s * n // n_shards, (s + 1) * n // n_shards


def build_index(
    root: Path,
    params: IndexParams,
    embeddings: np.ndarray,
    seed: int,
    key: str,
    world: World,
    progress: Callable[[int], None],
    after_block: Callable[[int], None],
) -> list[str]:
    """Builds params' index of embeddings (N, d) float16 (id = row) into root; returns its files
    (params.files). Collective: every rank of world calls it (see the module docstring).

    Args:
        key: identifies the inputs; encoded blocks from other inputs are discarded.
        progress: called with the rows of each block encoded (also the blocks resumed past).
        after_block: called with each encoded block's number once stored (a test hook).
    """
    n = len(embeddings)
    trained_path = root / TRAINED_FILE
    if world.is_main:
        train_index(params, embeddings, seed).save(trained_path)
    barrier(world)
    scratch = IvfPqIndex.load(trained_path, mmap=False)
    paths = {name: root / path for name, path in ENCODED_FILES.items()}
    writer = BlockWriter(
        {
            paths["lists"]: ((n,), np.dtype(np.int64)),
            paths["codes"]: ((n, scratch.pq_m), np.dtype(np.uint8)),
        },
        ENCODE_BLOCK,
        f"{key}|{quantizer_fingerprint(scratch)}",
        world,
    )
    progress(writer.rows_done)
    for b, start, stop in writer.pending():
        list_of, codes = encode(scratch, np.asarray(embeddings[start:stop], dtype=np.float32), start)
        writer.write(b, {paths["lists"]: list_of, paths["codes"]: codes})
        progress(stop - start)
        after_block(b)
    writer.finish()

    lists, codes = (np.load(paths[name], mmap_mode="r") for name in ("lists", "codes"))
    for s in range(world.rank, params.shards, world.size):
        lo, hi = shard_bounds(n, params.shards, s)
        shard = IvfPqIndex.load(trained_path, mmap=False)
        shard.add_preassigned(np.asarray(lists[lo:hi]), np.asarray(codes[lo:hi]),
                              np.arange(lo, hi, dtype=np.int64))
        shard.save(_shard_path(root, params, s))
    del lists, codes
    barrier(world)
    if world.is_main:
        if params.shards > 1:
            entries = [shard_entry(s, IvfPqIndex.load(_shard_path(root, params, s)))
                       for s in range(params.shards)]
            write_shards_manifest(root / SHARDS_DIR, entries, scratch, quantizer_fingerprint(scratch))
        for path in (trained_path, *paths.values()):
            path.unlink()
    return params.files


def _shard_path(root: Path, params: IndexParams, s: int) -> Path:
    """Where shard s is saved: index.ivfpq for one shard, else the shard directory's file."""
    if params.shards == 1:
        return root / INDEX_FILE
    (root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    return root / SHARDS_DIR / shard_file(s)
