"""Retrieval: the k nearest chunks of each query, excluding chunks of given documents.

This is the one retrieval path: the neighbours stage, ``Database.retrieve`` (generation and
evaluation) and the recall check of ``retro db info`` all go through :func:`search_excluding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retro.db.chunks import ChunkStore
from retro.db.indexing import Searcher

# Extra results asked for: room for exclusions, and k_factor times as many PQ candidates
# re-ranked (at k = 2 alone recall@2 was 0.93 on the default corpus; with 16 extra 0.99).
FIRST_EXTRA = 16


def padded_doc_ids(exclude: Sequence[Sequence[int]] | np.ndarray | None, n: int) -> np.ndarray | None:
    """Per-query document ids as an (n, E) int64 matrix padded with -1 (None stays None)."""
    if exclude is None:
        return None
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2:
        if len(exclude) != n:
            raise ValueError(f"exclude_doc_ids has {len(exclude)} rows for {n} queries")
        return exclude.astype(np.int64, copy=False)
    rows = [np.asarray(row, dtype=np.int64).ravel() for row in exclude]
    if len(rows) != n:
        raise ValueError(f"exclude_doc_ids has {len(rows)} rows for {n} queries")
    width = max((len(row) for row in rows), default=0)
    matrix = np.full((n, max(width, 1)), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix


def doc_ranges_to_ids(ranges: np.ndarray) -> np.ndarray:
    """(n, 2) half-open document ranges [first, last) -> (n, E) int64 ids padded with -1."""
    widths = ranges[:, 1] - ranges[:, 0]
    columns = np.arange(max(1, int(widths.max(initial=0))), dtype=np.int64)
    ids = ranges[:, :1] + columns[None, :]
    return np.where(columns[None, :] < widths[:, None], ids, -1)


def search_excluding(
    search: Searcher,
    queries: np.ndarray,
    k: int,
    doc_ids: np.ndarray,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The best k chunks of each query whose document is not excluded for it.

    Args:
        search: the database's search function.
        queries: (n, d) float32.
        k: results per query.
        doc_ids: (N,) int64, the document of every chunk.
        exclude: (n, E) int64 document ids per query, -1 padded, or None.

    Returns:
        D (n, k) float32 and I (n, k) int64, best first; -1 (and inf) where fewer than k remain.
        A query is searched again with twice as many results while short, so its result depends
        on that query alone.
    """
    n, ntotal = len(queries), len(doc_ids)
    distances = np.full((n, k), np.inf, dtype=np.float32)
    labels = np.full((n, k), -1, dtype=np.int64)
    pending = np.arange(n)
    k_search = k + FIRST_EXTRA
    while len(pending):
        k_search = min(k_search, ntotal)
        found_d, found_i = search(queries[pending], k_search)
        keep = found_i >= 0
        if exclude is not None:
            docs = np.where(keep, doc_ids[np.maximum(found_i, 0)], -1)
            excluded = (docs[:, :, None] == exclude[pending][:, None, :]).any(axis=2)
            keep &= ~excluded
        # Stable order puts each row's kept results first, best first.
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        rows, width = np.arange(len(pending))[:, None], order.shape[1]
        kept = np.take_along_axis(keep, order, axis=1)
        distances[pending, :width] = np.where(kept, found_d[rows, order], np.inf)
        labels[pending, :width] = np.where(kept, found_i[rows, order], -1)
        if k_search >= ntotal:
            break
        # Short rows whose search came back full may find more further out.
        short = (kept.sum(axis=1) < k) & (found_i[:, -1] >= 0)
        pending = pending[short]
        k_search *= 2
    return distances, labels


@dataclass(frozen=True)
class Neighbours:
    """Neighbours of n queries: ids (n, k) int64 (-1 = none), their values' tokens and lengths."""

    ids: np.ndarray  # (n, k) int64
    lengths: np.ndarray  # (n, k) int32, 0 = none
    tokens: np.ndarray  # (n, k, 2m) int64, eod-padded
    distances: np.ndarray  # (n, k) float32 squared L2 between unit vectors, inf = none


def retrieve_embedded(
    search: Searcher,
    chunks: ChunkStore,
    queries: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
) -> Neighbours:
    """Neighbours (chunk + continuation) of queries (n, d) float32, excluding documents per query."""
    distances, ids = search_excluding(search, queries, k, chunks.doc_ids, exclude)
    tokens, lengths = chunks.neighbour_values(ids)
    return Neighbours(ids, lengths, tokens, distances)
