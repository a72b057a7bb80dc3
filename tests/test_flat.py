"""FlatIndex, the ground truth of the recall tests, against a float64 numpy brute force."""

import numpy as np
import pytest
from support import exact_distances

import retro


@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_matches_numpy(small_data, metric, k):
    ids = np.arange(len(small_data.base), dtype=np.int64) * 7 + 3
    flat = retro.FlatIndex(16, metric)
    flat.add(small_data.base[:1500], ids[:1500])
    flat.add(small_data.base[1500:], ids[1500:])
    assert flat.ntotal == len(small_data.base) and flat.metric == metric
    distances, labels = flat.search(small_data.queries, k)
    reference = exact_distances(metric, small_data.queries, small_data.base)
    order = np.argsort(reference if metric == "l2" else -reference, axis=1, kind="stable")[:, :k]
    assert np.array_equal(labels, ids[order])
    np.testing.assert_allclose(distances, np.take_along_axis(reference, order, axis=1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_k_above_ntotal_and_empty(small_data, metric):
    worst = np.inf if metric == "l2" else -np.inf
    flat = retro.FlatIndex(16, metric)
    distances, labels = flat.search(small_data.queries, 3)
    assert np.all(labels == -1) and np.all(distances == worst)
    flat.add(small_data.base[:4])
    distances, labels = flat.search(small_data.queries, 6)
    assert np.all(np.sort(labels[:, :4], axis=1) == np.arange(4))
    assert np.all(labels[:, 4:] == -1) and np.all(distances[:, 4:] == worst)
    flat.reset()
    assert flat.ntotal == 0
    assert np.all(flat.search(small_data.queries, 2)[1] == -1)


def test_flat_search_is_the_same_for_one_and_two_threads(small_data):
    flat = retro.FlatIndex(16)
    flat.add(small_data.base)
    results = []
    for threads in (1, 2):
        retro.set_num_threads(threads)
        results.append([flat.search(small_data.queries[:n], 5) for n in (1, 3, 100)])
    for (d1, i1), (d2, i2) in zip(*results):
        assert np.array_equal(i1, i2) and np.array_equal(d1, d2)
