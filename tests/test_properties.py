"""Property tests: for random shapes and parameters, search results keep their invariants."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from support import clustered

import retro


@st.composite
def cases(draw):
    pq_m = draw(st.sampled_from([1, 2, 4, 8]))
    return {
        "pq_m": pq_m,
        "d": pq_m * draw(st.integers(1, 4)),
        "nlist": draw(st.integers(1, 32)),
        "n_train": draw(st.integers(256, 600)),
        "n_add": draw(st.integers(0, 300)),
        "n_queries": draw(st.integers(1, 12)),
        "k": draw(st.integers(1, 40)),
        "nprobe": draw(st.integers(1, 40)),
        "metric": draw(st.sampled_from(["l2", "ip"])),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=25, deadline=None, derandomize=True)
@given(case=cases())
def test_search_invariants(case):
    d, metric, k = case["d"], case["metric"], case["k"]
    points = clustered(case["n_train"] + case["n_queries"], d, n_centres=20, seed=case["seed"])
    train, queries = points[: case["n_train"]], points[case["n_train"] :]
    added = train[: case["n_add"]]
    ids = np.random.default_rng(case["seed"]).choice(2**50, size=case["n_add"], replace=False)
    index = retro.IvfPqIndex(d, case["nlist"], case["pq_m"], metric=metric, seed=case["seed"])
    index.niter = 3
    index.train(train)
    index.add(added, ids)
    assert index.ntotal == case["n_add"] and index.list_sizes().sum() == case["n_add"]

    distances, labels = index.search(queries, k, nprobe=case["nprobe"])
    assert distances.shape == labels.shape == (case["n_queries"], k)
    assert distances.dtype == np.float32 and labels.dtype == np.int64
    found = labels >= 0
    assert np.all(np.isin(labels[found], ids))
    assert all(len(set(row[row >= 0])) == np.count_nonzero(row >= 0) for row in labels)
    assert np.array_equal(found, np.cumprod(found, axis=1).astype(bool))  # -1 only at the tail
    assert np.all(np.isfinite(distances[found]))
    if metric == "l2":
        assert np.all(distances[~found] == np.inf)
        assert np.all(distances[:, :-1] <= distances[:, 1:])
        # squared distances to reconstructions: non-negative up to float32 rounding
        scale = 1.0 + (queries.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
        assert np.all(distances[found] >= -1e-3 * np.broadcast_to(scale, distances.shape)[found])
    else:
        assert np.all(distances[~found] == -np.inf)
        assert np.all(distances[:, :-1] >= distances[:, 1:])
    if case["nprobe"] >= case["nlist"]:  # every list is visited: min(k, ntotal) results
        assert np.all(found.sum(axis=1) == min(k, case["n_add"]))
        clamped = index.search(queries, k, nprobe=case["nlist"])
        assert np.array_equal(clamped[0], distances) and np.array_equal(clamped[1], labels)
    else:
        assert np.all(found.sum(axis=1) <= min(k, case["n_add"]))
