"""The torch-side logic of the GPU index that runs without a GPU: the (distance, id) merge of shard
and re-ranking results (merge_top_k, from retro.index.topk_merge) against a plain sort, and the
k-means loop of retro.index.kmeans (update, empty-cluster splits, seeding) with its CUDA assignment
replaced by an exact torch one."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from retro.index import kmeans  # noqa: E402
from retro.index.topk_merge import merge_top_k  # noqa: E402


def reference_merge(distances, labels, k, metric):
    """Row by row: sort (key, id) with missing (-1) last, key = distance or -distance (ip)."""
    out_d, out_i = [], []
    for d_row, i_row in zip(np.concatenate(distances, 1), np.concatenate(labels, 1)):
        entries = sorted(
            (np.inf if i < 0 else (-d if metric == "ip" else d), np.iinfo(np.int64).max if i < 0 else i, d, i)
            for d, i in zip(d_row, i_row)
        )[:k]
        out_d.append([(np.inf if metric == "l2" else -np.inf) if e[3] < 0 else e[2] for e in entries])
        out_i.append([e[3] for e in entries])
    return np.array(out_d, np.float32), np.array(out_i)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_merge_orders_by_distance_then_id(metric):
    rng = np.random.default_rng(0)
    parts_d, parts_i = [], []
    for shard in range(3):
        d = rng.integers(0, 5, (20, 6)).astype(np.float32)  # many exact ties
        i = rng.choice(1000, (20, 6), replace=False) + 1000 * shard
        i[rng.random((20, 6)) < 0.2] = -1  # missing results
        d[i < 0] = np.inf if metric == "l2" else -np.inf
        parts_d.append(d)
        parts_i.append(i)
    got_d, got_i = merge_top_k([torch.from_numpy(d) for d in parts_d],
                               [torch.from_numpy(i) for i in parts_i], 10, metric)
    want_d, want_i = reference_merge(parts_d, parts_i, 10, metric)
    assert np.array_equal(got_i.numpy(), want_i)
    assert np.array_equal(got_d.numpy(), want_d)


def exact_assignment(x, centroids, metric="l2"):
    dist = ((x[:, None, :] - centroids[None]) ** 2).sum(-1) if metric == "l2" else -(x @ centroids.T)
    distances, labels = dist.min(1)
    return labels, distances


def test_kmeans_loop_with_exact_assignment(monkeypatch):
    """Duplicated points force empty clusters: they are split, the objective falls, a seed
    reproduces the run."""
    monkeypatch.setattr(kmeans, "nearest_centroids", exact_assignment)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32))
    x = torch.cat([x, x, x])  # 900 points, 300 distinct
    centroids, objective = kmeans.kmeans(x, 280, niter=6, seed=3)
    assert objective[-1] < objective[0]
    labels, _ = exact_assignment(x, centroids)
    assert len(torch.unique(labels)) >= 250  # splits refilled the clusters left empty
    again, _ = kmeans.kmeans(x, 280, niter=6, seed=3)
    assert torch.equal(centroids, again)
