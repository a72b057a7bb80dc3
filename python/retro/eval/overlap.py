"""Longest common token run between a chunk and its retrieved neighbours (DeepMind §4.4 leakage)."""

from __future__ import annotations

import numpy as np


def longest_common_run(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest run of consecutive tokens found in both a (n,) and b (r,)."""
    return int(chunk_overlaps(np.asarray(a)[None], np.asarray(b)[None, None],
                              np.array([[len(b)]]))[0])


def chunk_overlaps(chunks: np.ndarray, nbr_tokens: np.ndarray, nbr_lens: np.ndarray) -> np.ndarray:
    """For each chunk, the longest token run it shares with any of its neighbours' real tokens.

    chunks (N, m), nbr_tokens (N, K, R), nbr_lens (N, K) (tokens past a neighbour's length are not
    real and never match) -> (N,) int64. Dynamic programming along the chunk, vectorized over
    chunks, neighbours and neighbour positions: run[j] = run_before[j - 1] + 1 where tokens match.
    """
    chunks, nbr_tokens = np.asarray(chunks), np.asarray(nbr_tokens)
    n, m = chunks.shape
    real = np.arange(nbr_tokens.shape[2]) < np.asarray(nbr_lens)[..., None]  # (N, K, R)
    run = np.zeros(nbr_tokens.shape, dtype=np.int64)
    best = np.zeros(n, dtype=np.int64)
    for i in range(m):
        match = (nbr_tokens == chunks[:, i, None, None]) & real
        extended = np.zeros_like(run)
        extended[..., 1:] = run[..., :-1]
        run = np.where(match, extended + 1, 0)
        best = np.maximum(best, run.max(axis=(1, 2), initial=0))
    return best
