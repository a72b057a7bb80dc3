"""Training of an OPQ rotation (Ge et al., "Optimized Product Quantization", 2013), as faiss's
``OPQMatrix`` trains it.

The rotation R (d_out, d), orthonormal rows, is chosen so that a product quantizer of the rotated
vectors R x (opq_m sub-quantizers of 256 centroids) reconstructs them well. Training alternates:

1. k-means of each sub-quantizer on the rotated (centred) training vectors X R^T, and their PQ
   reconstructions Y (n, d_out);
2. R from the orthogonal Procrustes problem min_R ||X - Y R|| (the vectors against their
   reconstructions taken back through R^T): with X^T Y = U S V^T (thin SVD), R = V U^T. With
   d_out = d this is min_R ||X R^T - Y||.

It starts from a seeded random orthonormal R; each k-means after the first starts from the previous
centroids. The index then uses R (``retro.IvfPqIndex`` with ``opq_m > 0``): its core rotates every
vector it trains on, adds or searches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from retro.index.flat import FlatIndex

try:  # numpy's BLAS threads and the core's OpenMP threads, alternating, slow each other down
    from threadpoolctl import threadpool_limits
except ImportError:  # not a dependency: then both keep their threads
    threadpool_limits = None

OPQ_KSUB = 256  # centroids per sub-quantizer while training the rotation (8-bit, as faiss)


@dataclass
class OpqTrainParams:
    """faiss's ``OPQMatrix`` defaults."""

    niter: int = 50  # alternations of PQ k-means and rotation update
    niter_pq: int = 4  # k-means iterations per alternation
    niter_pq_0: int = 40  # k-means iterations of the first alternation
    max_train_points: int = 256 * 256  # larger training sets are subsampled (seeded)


@dataclass
class OpqTraining:
    """What :func:`train_opq_rotation` returns."""

    rotation: np.ndarray  # (d_out, d) float32, orthonormal rows
    # per alternation: mean squared distance between the centred training vectors X and their
    # reconstructions Y R from the PQ of X R^T (with d_out < d this counts the dropped dimensions)
    errors: list[float]


def random_rotation(d: int, d_out: int, rng: np.random.Generator) -> np.ndarray:
    """(d_out, d) float64 with orthonormal rows: the first d_out rows of a random orthogonal matrix."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q *= np.sign(np.diag(r))  # makes the draw uniform over orthogonal matrices
    return q.T[:d_out]


def pq_assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest sub-centroid per sub-vector, with the core's exact search (a GEMM fused with the
    argmin).

    Args:
        x: (n, m * dsub) float32.
        centroids: (m, ksub, dsub) float32.

    Returns:
        codes (n, m) int64.
    """
    m, _, dsub = centroids.shape
    n = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(n, m, dsub).transpose(1, 0, 2))  # (m, n, dsub): one copy
    codes = np.empty((n, m), np.int64)
    for j in range(m):
        search = FlatIndex(dsub)
        search.add(centroids[j])
        codes[:, j] = search.search(sub[j], 1)[1][:, 0]
    return codes


def pq_decode(codes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """codes (n, m) -> reconstructions (n, m * dsub) float32 from centroids (m, ksub, dsub)."""
    m = centroids.shape[0]
    return centroids[np.arange(m), codes].reshape(codes.shape[0], -1)


def pq_kmeans(x: np.ndarray, centroids: np.ndarray, niter: int) -> np.ndarray:
    """niter Lloyd iterations of every sub-quantizer from the given centroids.

    Args:
        x: (n, m * dsub) float32.
        centroids: (m, ksub, dsub) float32 initial centroids (not modified).

    Returns:
        (m, ksub, dsub) float32; a centroid that loses all its points stays where it was.
    """
    m, ksub, dsub = centroids.shape
    centroids = centroids.copy()
    sub = x.reshape(-1, m, dsub)
    for _ in range(niter):
        bins = (pq_assign(x, centroids) + np.arange(m) * ksub).ravel()  # (n * m,) sub-quantizer, code
        counts = np.bincount(bins, minlength=m * ksub).reshape(m, ksub)
        sums = np.stack(
            [np.bincount(bins, weights=sub[:, :, t].ravel(), minlength=m * ksub) for t in range(dsub)], -1
        ).reshape(m, ksub, dsub)
        filled = counts > 0
        centroids[filled] = (sums[filled] / counts[filled][:, None]).astype(np.float32)
    return centroids


def train_opq_rotation(
    x: np.ndarray, d_out: int, opq_m: int, seed: int = 0, params: OpqTrainParams | None = None
) -> OpqTraining:
    """Trains an OPQ rotation.

    Args:
        x: (n, d) float32 training vectors, n >= 256.
        d_out: rotated dimension, 1 <= d_out <= d, divisible by opq_m.
        opq_m: sub-quantizers of the PQ the rotation is trained for.
        seed: seeds the subsampling, the initial rotation and the initial centroids.
        params: iterations and subsampling (faiss's defaults if None).

    Returns:
        The rotation (d_out, d) float32 and the reconstruction error of each alternation.
    """
    with threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext():
        return _train_opq_rotation(x, d_out, opq_m, seed, params or OpqTrainParams())


def _train_opq_rotation(
    x: np.ndarray, d_out: int, opq_m: int, seed: int, params: OpqTrainParams
) -> OpqTraining:
    n, d = x.shape
    if not 1 <= d_out <= d:
        raise ValueError(f"the OPQ output dimension must be in [1, d={d}], got {d_out}")
    if opq_m < 1 or d_out % opq_m:
        raise ValueError(f"the OPQ output dimension {d_out} is not divisible by opq_m={opq_m}")
    if n < OPQ_KSUB:
        raise ValueError(f"OPQ training needs at least {OPQ_KSUB} points, got {n}")
    rng = np.random.default_rng(seed)
    if n > params.max_train_points:
        x = x[np.sort(rng.choice(n, params.max_train_points, replace=False))]
    xc = (x - x.mean(0, dtype=np.float64)).astype(np.float32)  # as faiss: the rotation of centred data
    x_energy = float(np.einsum("ij,ij->", xc, xc, dtype=np.float64))
    rotation = random_rotation(d, d_out, rng).astype(np.float32)
    dsub = d_out // opq_m
    centroids = None
    errors = []
    for it in range(params.niter):
        projected = xc @ rotation.T  # (n, d_out)
        if centroids is None:
            first = rng.choice(len(xc), OPQ_KSUB, replace=False)
            centroids = np.ascontiguousarray(projected[first].reshape(OPQ_KSUB, opq_m, dsub).transpose(1, 0, 2))
        centroids = pq_kmeans(projected, centroids, params.niter_pq_0 if it == 0 else params.niter_pq)
        reconstructions = pq_decode(pq_assign(projected, centroids), centroids)
        # Procrustes: with orthonormal rows ||X - Y R||^2 = ||X||^2 + ||Y||^2 - 2 trace(R X^T Y),
        # smallest for R = V U^T
        xty = (xc.T @ reconstructions).astype(np.float64)  # (d, d_out)
        y_energy = float(np.einsum("ij,ij->", reconstructions, reconstructions, dtype=np.float64))
        errors.append((x_energy + y_energy - 2.0 * float((rotation * xty.T).sum())) / len(xc))
        u, _, vt = np.linalg.svd(xty, full_matrices=False)
        rotation = (u @ vt).T.astype(np.float32)
    return OpqTraining(np.ascontiguousarray(rotation), errors)
