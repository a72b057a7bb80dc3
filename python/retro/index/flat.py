"""Exact search over stored vectors: the ground truth of recall measurements, and the
nearest-centroid search of OPQ training."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from retro import _core
from retro._arrays import as_count, as_float32_matrix, as_int64_vector

Metric = Literal["l2", "ip"]


class FlatIndex:
    """Exact search over stored float32 vectors: the ground truth for recall measurements."""

    def __init__(self, d: int, metric: Metric = "l2") -> None:
        self._index = _core.FlatIndex(d, metric)

    d = property(lambda self: self._index.d, doc="Vector dimension.")
    metric = property(lambda self: self._index.metric, doc='"l2" or "ip".')
    ntotal = property(lambda self: self._index.ntotal, doc="Number of stored vectors.")

    def add(self, x: Any, ids: Any = None) -> None:
        """Stores x (n, d) with ids (n,) int64, or ntotal .. ntotal+n-1 if None."""
        x = as_float32_matrix(x, "added vectors")
        self._index.add(x, None if ids is None else as_int64_vector(ids, x.shape[0]))

    def search(self, x: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest neighbours of x (n, d): D (n, k) float32, I (n, k) int64, best first."""
        return self._index.search(as_float32_matrix(x, "queries"), as_count(k, "k"))

    def reset(self) -> None:
        self._index.reset()

    def __repr__(self) -> str:
        return f"FlatIndex(d={self.d}, metric={self.metric!r}, ntotal={self.ntotal})"
