"""Shared seeded data and trained indexes, built once per session and never modified by tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from support import D, K, N_BASE, N_QUERIES, NLIST, PQ_M, clustered

import retro


@dataclass(frozen=True)
class Dataset:
    base: np.ndarray  # (N_BASE, D) float32, also the training set
    queries: np.ndarray  # (N_QUERIES, D), from the same clusters, not copies of base rows


@dataclass(frozen=True)
class Built:
    index: retro.IvfPqIndex  # trained on base, base added with ids 0 .. N_BASE - 1
    truth: np.ndarray  # (N_QUERIES, K) exact neighbours from FlatIndex


@pytest.fixture(autouse=True)
def restore_global_settings():
    """Tests may change the thread count, SIMD level and bf16 kernel; put them back afterwards."""
    threads, level, bf16 = retro.get_num_threads(), retro.simd_level(), retro.bf16_kernel()
    yield
    retro.set_num_threads(threads)
    retro.set_simd_level(level)
    retro.set_bf16_kernel(bf16)


@pytest.fixture(scope="session")
def data() -> Dataset:
    points = clustered(N_BASE + N_QUERIES, D, n_centres=256, spread=0.5, seed=0)
    return Dataset(base=points[:N_BASE], queries=points[N_BASE:])


@pytest.fixture(scope="session")
def built(data) -> dict[str, Built]:
    """metric -> an IVF64,PQ8 index over data.base and the exact top-K of data.queries."""
    out = {}
    for metric in ("l2", "ip"):
        index = retro.IvfPqIndex(D, NLIST, PQ_M, metric=metric, seed=0)
        index.train(data.base)
        index.add(data.base)
        flat = retro.FlatIndex(D, metric)
        flat.add(data.base)
        out[metric] = Built(index=index, truth=flat.search(data.queries, K)[1])
    return out


@pytest.fixture(scope="session")
def small_data() -> Dataset:
    """16-d data for tests that build their own indexes (IVF16,PQ4: ~30 ms to train)."""
    points = clustered(2100, 16, n_centres=64, spread=0.5, seed=3)
    return Dataset(base=points[:2000], queries=points[2000:])


@pytest.fixture
def make_small(small_data):
    """make_small(metric) -> a fresh trained, empty IVF16,PQ4 index for small_data."""

    def make(metric: str = "l2") -> retro.IvfPqIndex:
        index = retro.IvfPqIndex(16, 16, 4, metric=metric, seed=1)
        index.niter = 10
        index.train(small_data.base)
        return index

    return make
