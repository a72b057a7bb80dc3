"""retro.index.topk_merge.merge_top_k, the one merge of shard and re-ranking results, on numpy arrays
and torch tensors: search's order (L2 ascending, inner product descending; ties by smaller id;
missing results last), values returned as given."""

from __future__ import annotations

import numpy as np
import pytest

from retro.index.topk_merge import merge_top_k


def reference(distances, labels, k, metric):
    """Row by row with Python's sort; missing (-1) last as (+inf / -inf, -1)."""
    worst = np.inf if metric == "l2" else -np.inf
    out_d, out_i = [], []
    for d_row, i_row in zip(np.concatenate(distances, 1), np.concatenate(labels, 1)):
        real = sorted(((d if metric == "l2" else -d), i, d) for d, i in zip(d_row, i_row) if i >= 0)
        real = real[:k] + [(0.0, -1, worst)] * max(0, k - len(real))
        out_d.append([e[2] for e in real])
        out_i.append([e[1] for e in real])
    return np.array(out_d, np.float32), np.array(out_i, np.int64)


def parts(metric, columns=6):
    rng = np.random.default_rng(0)
    ds, ids = [], []
    for shard in range(3):
        d = rng.integers(-3, 3, (20, columns)).astype(np.float32)  # many exact ties
        i = rng.choice(1000, (20, columns), replace=False) + 1000 * shard
        i[rng.random((20, columns)) < 0.2] = -1
        d[i < 0] = np.inf if metric == "l2" else -np.inf
        ds.append(d)
        ids.append(i.astype(np.int64))
    return ds, ids


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("k", [10, 25])  # 25 > the 18 columns of all parts: padded
def test_numpy_merge_matches_reference(metric, k):
    ds, ids = parts(metric)
    got_d, got_i = merge_top_k(ds, ids, k, metric)
    want_d, want_i = reference(ds, ids, k, metric)
    assert np.array_equal(got_i, want_i)
    assert np.array_equal(got_d, want_d)
    assert got_d.dtype == np.float32 and got_i.dtype == np.int64


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_torch_merge_equals_numpy_merge(metric):
    torch = pytest.importorskip("torch")
    ds, ids = parts(metric)
    got_d, got_i = merge_top_k([torch.from_numpy(d) for d in ds],
                               [torch.from_numpy(i) for i in ids], 25, metric)
    want_d, want_i = merge_top_k(ds, ids, 25, metric)
    assert np.array_equal(got_i.numpy(), want_i)
    assert np.array_equal(got_d.numpy(), want_d)
