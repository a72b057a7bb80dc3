"""The merge of top-k search results (per shard, or re-scored candidates) into one top-k per row.

Distances keep the convention of ``search`` end to end: L2 distances, smaller is better; inner
product scores, larger is better. A merged row is ordered best first, ties by the smaller id, with
missing results (id -1) last as (+inf (L2) / -inf (IP), -1): the order the core's searches use, so
the top-k of the union of per-shard top-k is the unsharded top-k. Numpy arrays and torch tensors
(on any device) are merged alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_NO_ID = np.iinfo(np.int64).max  # sort key of a missing result (-1): after every real id


def missing_distance(metric: str) -> float:
    """The distance of a missing result: the worst one under metric ("l2" or "ip")."""
    return float("inf") if metric == "l2" else float("-inf")


def merge_top_k(
    distances: Sequence[Any], labels: Sequence[Any], k: int, metric: str
) -> tuple[Any, Any]:
    """The best k of each row of the concatenated parts (each (n, c_i), any order) -> distances,
    labels (n, k) best first by (distance, id), padded with missing results; metric "l2" or "ip"."""
    xp = _Numpy if isinstance(labels[0], np.ndarray) else _Torch
    worst = missing_distance(metric)
    d, ids = xp.cat(distances), xp.cat(labels)
    if ids.shape[1] < k:  # fewer columns than k in all parts together: pad with missing results
        d = xp.cat([d, xp.full(d, k - ids.shape[1], worst)])
        ids = xp.cat([ids, xp.full(ids, k - ids.shape[1], -1)])
    missing = ids < 0
    d = xp.where(missing, worst, d)
    # Two stable sorts: by id (missing last), then by distance best first, so ties keep id order.
    by_id = xp.argsort(xp.where(missing, _NO_ID, ids))
    d, ids = xp.take(d, by_id), xp.take(ids, by_id)
    order = xp.argsort(d if metric == "l2" else -d)[:, :k]  # -d: a sort key, the values stay
    return xp.take(d, order), xp.take(ids, order)


class _Numpy:
    """The array operations of merge_top_k on (n, c) numpy arrays."""

    @staticmethod
    def where(condition: Any, value: Any, a: Any) -> Any:
        return np.where(condition, value, a)

    @staticmethod
    def cat(parts: Sequence[Any]) -> Any:
        return np.concatenate(list(parts), 1)

    @staticmethod
    def full(like: Any, columns: int, value: Any) -> Any:
        return np.full((like.shape[0], columns), value, like.dtype)

    @staticmethod
    def argsort(a: Any) -> Any:
        return np.argsort(a, axis=1, kind="stable")

    @staticmethod
    def take(a: Any, order: Any) -> Any:
        return np.take_along_axis(a, order, 1)


class _Torch:
    """The same on (n, c) torch tensors, on their device."""

    @staticmethod
    def where(condition: Any, value: Any, a: Any) -> Any:
        import torch

        return torch.where(condition, value, a)

    @staticmethod
    def cat(parts: Sequence[Any]) -> Any:
        import torch

        return torch.cat(list(parts), 1)

    @staticmethod
    def full(like: Any, columns: int, value: Any) -> Any:
        import torch

        return torch.full((like.shape[0], columns), value, dtype=like.dtype, device=like.device)

    @staticmethod
    def argsort(a: Any) -> Any:
        import torch

        return torch.argsort(a, dim=1, stable=True)

    @staticmethod
    def take(a: Any, order: Any) -> Any:
        return a.gather(1, order)
