"""Results do not depend on how the work is split: thread count, SIMD level, batching, concurrent
Python threads."""

import threading

import numpy as np
import pytest
from support import K, SIMD_LEVELS

import retro

NPROBE = 8


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n_queries", [1, 3, 200])  # one query splits probes, few split columns
def test_one_and_two_threads_give_identical_results(built, data, metric, n_queries):
    index, queries = built[metric].index, data.queries[:n_queries]
    retro.set_num_threads(1)
    d1, i1 = index.search(queries, K, nprobe=NPROBE)
    retro.set_num_threads(2)
    d2, i2 = index.search(queries, K, nprobe=NPROBE)
    assert np.array_equal(i1, i2) and np.array_equal(d1, d2)


def test_training_is_identical_for_one_and_two_threads(small_data):
    results = []
    for threads in (1, 2):
        retro.set_num_threads(threads)
        index = retro.IvfPqIndex(16, 16, 4, seed=7)
        index.niter = 5
        index.train(small_data.base)
        index.add(small_data.base)
        results.append((index.coarse_centroids(), *index.search(small_data.queries, K, nprobe=4)))
    for one, two in zip(*results):
        assert np.array_equal(one, two)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_every_simd_level_gives_the_same_results(built, data, metric):
    index = built[metric].index
    results = {}
    for level in SIMD_LEVELS:
        retro.set_simd_level(level)
        results[level] = index.search(data.queries, K, nprobe=NPROBE)
    best_d, best_i = results[SIMD_LEVELS[-1]]
    for level, (distances, labels) in results.items():
        assert np.array_equal(labels, best_i), level
        # the scalar build has no FMA: its tables differ by an ulp (observed 7e-7 relative at most)
        np.testing.assert_allclose(distances, best_d, rtol=1e-5, err_msg=level)
    if "avx2" in results and "avx512" in results:  # both use FMA: observed bit-identical
        assert np.array_equal(results["avx2"][0], results["avx512"][0])


@pytest.mark.parametrize("nprobe", [NPROBE, 64])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_filtered_scan_returns_exactly_the_float_scan(built, data, metric, nprobe):
    """avx512 filters with 8-bit tables (queries scanning >= 1024 vectors), avx2 scans in float:
    both sum the same float distances, so results must be bit-identical."""
    if not {"avx2", "avx512"} <= set(SIMD_LEVELS):
        pytest.skip("needs a CPU with both avx2 and avx512 (VBMI) kernels")
    index = built[metric].index
    results = {}
    for level in ("avx2", "avx512"):
        retro.set_simd_level(level)
        results[level] = index.search(data.queries, K, nprobe=nprobe)
    retro.set_simd_level(SIMD_LEVELS[-1])
    assert np.array_equal(results["avx2"][1], results["avx512"][1])
    assert np.array_equal(results["avx2"][0], results["avx512"][0])


@pytest.mark.parametrize("rerank", [False, True])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_batch_search_equals_one_by_one(built, data, metric, rerank):
    index = built[metric].index
    options = {"nprobe": NPROBE, "rerank": data.base if rerank else None}
    distances, labels = index.search(data.queries[:40], K, **options)
    for q in range(40):
        d_one, i_one = index.search(data.queries[q : q + 1], K, **options)
        assert np.array_equal(i_one[0], labels[q]) and np.array_equal(d_one[0], distances[q])


def test_concurrent_searches_from_python_threads(built, data):
    """The bindings release the GIL; two threads searching one index get the serial results."""
    index = built["l2"].index
    expected = index.search(data.queries, K, nprobe=NPROBE)
    start = threading.Barrier(2)
    results = [None, None]

    def worker(slot):
        start.wait()
        results[slot] = [index.search(data.queries, K, nprobe=NPROBE) for _ in range(5)]

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for per_thread in results:
        assert len(per_thread) == 5
        for distances, labels in per_thread:
            assert np.array_equal(distances, expected[0]) and np.array_equal(labels, expected[1])
