"""k-means and IVF-PQ training on a CUDA device.

The assignment step, the expensive one (n x k distances per iteration), is the core's CUTLASS GEMM
+ top-1 (``cuda/ivf_pq.cu``: ``nearest_centroids``); the update (means in float64) and the
re-seeding of empty clusters (faiss's split of a large cluster) run in torch. The algorithm is the
CPU's (``cpp/src/kmeans.cpp``): seeded subsampling to max_points_per_centroid points per centroid,
initial centroids drawn from the points, niter Lloyd iterations. The random streams differ from
the CPU's, so a GPU-trained index matches a CPU-trained one by recall, not bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from retro import _core
from retro._arrays import as_float32_matrix

SPLIT_EPS = 1.0 / 1024  # relative perturbation that separates a split cluster's two centroids


def nearest_centroids(
    x: torch.Tensor, centroids: torch.Tensor, metric: str = "l2"
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, d), centroids (k, d): contiguous float32 on one CUDA device -> labels (n,) int64 (the
    smallest index on ties) and distances (n,) float32: ||x - c||^2 (l2) or -<x, c> (ip)."""
    if x.dtype != torch.float32 or centroids.dtype != torch.float32 or x.device != centroids.device:
        raise ValueError("x and centroids must be float32 tensors on one CUDA device")
    x, centroids = x.contiguous(), centroids.contiguous()
    n, k = x.shape[0], centroids.shape[0]
    norms = (centroids * centroids).sum(1) if metric == "l2" else None
    labels = torch.empty(n, dtype=torch.int64, device=x.device)
    distances = torch.empty(n, dtype=torch.float32, device=x.device)
    workspace_bytes = _core.cuda_nearest_centroids_workspace(n, k)
    workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=x.device)
    _core.cuda_nearest_centroids(
        metric, n, x.shape[1], x.data_ptr(), k, centroids.data_ptr(),
        0 if norms is None else norms.data_ptr(), labels.data_ptr(), distances.data_ptr(),
        workspace.data_ptr(), workspace_bytes, x.device.index,
        torch.cuda.current_stream(x.device).cuda_stream,
    )
    return labels, distances


def _cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k, d) float64 sums of the points of each cluster, 2^20 rows at a time."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], 1 << 20):
        sums.index_add_(0, labels[s : s + (1 << 20)], x[s : s + (1 << 20)].double())
    return sums


def _split_empty_clusters(centroids: torch.Tensor, sizes: np.ndarray, rng: np.random.Generator) -> None:
    """Each empty cluster takes half of a cluster drawn with probability ~ (size - 1); the two
    centroids are the big one's, pushed apart by +-SPLIT_EPS (alternating signs over dimensions)."""
    sign = torch.ones(centroids.shape[1], device=centroids.device)
    sign[1::2] = -1
    for ci in np.flatnonzero(sizes == 0):
        weights = np.maximum(sizes - 1, 0).astype(np.float64)
        cj = int(rng.choice(len(sizes), p=weights / weights.sum()))
        centroids[ci] = centroids[cj] * (1 + sign * SPLIT_EPS)
        centroids[cj] = centroids[cj] * (1 - sign * SPLIT_EPS)
        sizes[ci] = sizes[cj] // 2
        sizes[cj] -= sizes[ci]


def kmeans(
    x: torch.Tensor,
    k: int,
    niter: int = 25,
    max_points_per_centroid: int = 256,
    seed: int = 0,
    metric: str = "l2",
) -> tuple[torch.Tensor, list[float]]:
    """Lloyd's k-means on the GPU.

    Args:
        x: (n, d) float32 CUDA tensor, n >= k.
        k: centroids.
        niter: iterations (>= 1).
        max_points_per_centroid: larger training sets are subsampled (seeded, data order kept);
            0 keeps every point.
        seed: seeds the subsampling, the initial centroids and the splits of empty clusters.
        metric: assignment by "l2" or "ip" (inner product, as IVF with that metric).

    Returns:
        centroids (k, d) float32 on x's device, and the objective per iteration (the sum of the
        assigned distances: squared L2, or minus the inner products).
    """
    n = x.shape[0]
    if k < 1 or n < k:
        raise ValueError(f"k-means with {k} centroids needs at least as many training points, got {n}")
    if niter < 1:
        raise ValueError(f"k-means needs niter >= 1, got {niter}")
    rng = np.random.default_rng(seed)
    if max_points_per_centroid > 0 and n > k * max_points_per_centroid:
        keep = np.sort(rng.choice(n, k * max_points_per_centroid, replace=False))
        x, n = x[torch.from_numpy(keep).to(x.device)], len(keep)
    centroids = x[torch.from_numpy(rng.choice(n, k, replace=False)).to(x.device)].clone()
    objective = []
    for _ in range(niter):
        labels, distances = nearest_centroids(x, centroids, metric)
        objective.append(float(distances.double().sum()))
        sizes = torch.bincount(labels, minlength=k)
        filled = sizes > 0
        means = _cluster_sums(x, labels, k) / sizes.clamp(min=1)[:, None]
        centroids[filled] = means[filled].float()
        _split_empty_clusters(centroids, sizes.cpu().numpy(), rng)
    return centroids, objective


def train_ivfpq(index: Any, x: Any, device: Any = "cuda") -> list[float]:
    """Trains index (coarse k-means, then the PQ on residuals) on a GPU, as
    :meth:`retro.IvfPqIndex.train` does on the CPU, with its niter, max_points_per_centroid, seed
    and metric. An OPQ rotation (opq_m > 0) is trained on the CPU (:mod:`retro.index.opq`) and
    applied on the device before the k-means.

    Args:
        index: an untrained or trained :class:`retro.IvfPqIndex` with no vectors.
        x: (n, d) training vectors: numpy, or a torch tensor (CUDA tensors are read in place).
        device: the CUDA device to train on.

    Returns:
        The coarse k-means objective per iteration.
    """
    device = torch.device(device)
    if isinstance(x, torch.Tensor):
        if x.ndim != 2 or not x.dtype.is_floating_point:
            raise ValueError(f"training data must be a 2-D float tensor, got {x.dtype} {tuple(x.shape)}")
        x = x.detach().to(device, torch.float32).contiguous()
    else:
        x = torch.as_tensor(as_float32_matrix(x, "training data"), device=device)
    if x.shape[1] != index.d:
        raise ValueError(f"training data have dimension {x.shape[1]} but the index has d={index.d}")
    n, ksub = x.shape[0], 1 << index.pq_bits
    if n < index.nlist or n < ksub:
        raise ValueError(f"training needs at least nlist={index.nlist} and 2^pq_bits={ksub} points, got {n}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("training data hold NaN or inf")
    if index.opq_m:
        index.train_rotation(x.cpu().numpy())
        x = x @ torch.as_tensor(index.rotation(), device=device).T  # (n, ivf_d)
    mppc = index.max_points_per_centroid
    coarse, objective = kmeans(x, index.nlist, index.niter, mppc, index.seed, index.metric)
    n_pq = min(n, ksub * mppc) if mppc > 0 else n
    points = x[:: n // n_pq][:n_pq]  # evenly spaced rows, as the CPU takes them
    if index.by_residual:
        points = points - coarse[nearest_centroids(points, coarse, index.metric)[0]]
    dsub = index.ivf_d // index.pq_m
    pq = torch.stack([
        kmeans(points[:, m * dsub : (m + 1) * dsub].contiguous(), ksub, index.niter, 0,
               index.seed + 1 + m, "l2")[0]
        for m in range(index.pq_m)
    ])
    index._index.set_trained(coarse.cpu().numpy(), pq.cpu().numpy())
    return objective
