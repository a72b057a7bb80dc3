"""IVF-PQ: the retrieval database's approximate index (faiss's IVFADC), on the CPU.

This module is also the index's one hand-off to a CUDA device: :meth:`IvfPqIndex.to`,
:meth:`IvfPqIndex.load` with ``device=`` and :meth:`IvfPqIndex.train` with ``device=`` import the
device side (:mod:`retro.index.cuda`, :mod:`retro.index.kmeans`, which need torch) when called;
the device side never imports this module.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from retro import _core
from retro._arrays import as_count, as_float32_matrix, as_int64_vector
from retro.errors import IndexFileError
from retro.index.flat import Metric
from retro.index.opq import OpqTrainParams, train_opq_rotation


class IvfPqIndex:
    """Inverted file (nlist coarse k-means lists) with product-quantized residuals (faiss's IVFADC).

    Args:
        d: vector dimension.
        nlist: number of coarse lists (faiss's rule of thumb: 4 * sqrt(N) .. 16 * sqrt(N)).
        pq_m: sub-quantizers per vector; d must be divisible by pq_m.
        pq_bits: bits per sub-quantizer code: 8 (pq_m bytes per vector, distances from float
            tables) or 4 (fast-scan, faiss's "PQ<m>x4fs": ceil(pq_m / 2) bytes per vector, scanned
            with 8-bit tables in SIMD registers; its distances are approximate, so search it with
            ``rerank=`` vectors for exact results).
        metric: "l2" (squared Euclidean, smaller is better) or "ip" (inner product, larger is better).
        seed: seeds k-means; training is deterministic for a given seed and any thread count.
        by_residual: quantize each vector's residual to its list's centroid (True), or the vector
            itself (False, 4-bit only, as faiss's "PQ<m>x4fs"): then one look-up table per query
            serves every list, which makes probes cheaper.
        opq_m: 0 for none, or an OPQ rotation (faiss's "OPQ<opq_m>_<opq_d>") in front of the index,
            trained by :meth:`train` for a PQ of opq_m sub-quantizers (:mod:`retro.index.opq`; its
            iterations are ``opq_train_params``): the coarse quantizer and the PQ then work on the
            rotated vectors, re-ranking on the original ones.
        opq_d: the rotated dimension (None: d); opq_m and pq_m must divide it.
    """

    def __init__(
        self,
        d: int,
        nlist: int,
        pq_m: int,
        pq_bits: int = 8,
        metric: Metric = "l2",
        seed: int = 0,
        by_residual: bool = True,
        opq_m: int = 0,
        opq_d: int | None = None,
    ) -> None:
        if opq_d is not None and opq_d < 1:
            raise ValueError(f"opq_d must be positive (None: d), got {opq_d}")
        self._index = _core.IvfPqIndex(
            d, nlist, pq_m, pq_bits, metric, seed, bool(by_residual), opq_m, opq_d or 0
        )
        self.opq_train_params = OpqTrainParams()

    @classmethod
    def _wrap(cls, core_index: Any) -> IvfPqIndex:
        self = cls.__new__(cls)
        self._index = core_index
        self.opq_train_params = OpqTrainParams()
        return self

    @classmethod
    def from_trained(
        cls,
        coarse_centroids: Any,
        pq_centroids: Any,
        metric: Metric = "l2",
        seed: int = 0,
        by_residual: bool = True,
        rotation: Any = None,
        opq_m: int | None = None,
    ) -> IvfPqIndex:
        """An empty index trained with the given quantizers (e.g. another library's).

        Args:
            coarse_centroids: (nlist, d_ivf) float32, d_ivf = d without a rotation.
            pq_centroids: (pq_m, 2**pq_bits, d_ivf // pq_m) float32; sub-quantizer m codes the
                residual's dimensions [m * dsub, (m + 1) * dsub), as in faiss.
            metric: "l2" or "ip"; vectors go to the list of the nearest (l2) or largest inner
                product (ip) coarse centroid.
            seed: recorded for a later :meth:`train`.
            by_residual: whether the PQ codes residuals (True) or the vectors themselves.
            rotation: None, or an OPQ rotation (d_ivf, d) float32 with orthonormal rows applied
                to every vector before the quantizers.
            opq_m: the OPQ sub-quantizer count recorded with the rotation (None: pq_m).
        """
        coarse = as_float32_matrix(coarse_centroids, "coarse centroids")
        pq = np.asarray(pq_centroids)
        if pq.ndim != 3 or pq.dtype.kind != "f":
            raise ValueError(
                f"PQ centroids must be a 3-D float array (pq_m, ksub, dsub), got {pq.dtype} "
                f"of shape {pq.shape}"
            )
        pq_m, ksub, dsub = pq.shape
        if rotation is not None:
            rotation = as_float32_matrix(rotation, "OPQ rotation")
            if rotation.shape[0] != coarse.shape[1]:
                raise ValueError(
                    f"the OPQ rotation {rotation.shape} maps to {rotation.shape[0]} dimensions but "
                    f"the coarse centroids have d={coarse.shape[1]}"
                )
        elif opq_m is not None:
            raise ValueError("opq_m is given without a rotation")
        if ksub < 1 or ksub & (ksub - 1):
            raise ValueError(f"PQ centroids: ksub={ksub} is not a power of 2")
        if pq_m * dsub != coarse.shape[1]:
            raise ValueError(
                f"PQ centroids {pq.shape} cover pq_m * dsub = {pq_m * dsub} dimensions but the "
                f"coarse centroids have d={coarse.shape[1]}"
            )
        if rotation is None:
            self = cls(coarse.shape[1], coarse.shape[0], pq_m, ksub.bit_length() - 1, metric, seed, by_residual)
        else:
            self = cls(rotation.shape[1], coarse.shape[0], pq_m, ksub.bit_length() - 1, metric, seed,
                       by_residual, opq_m=opq_m or pq_m, opq_d=rotation.shape[0])
            self.set_rotation(rotation)
        self._index.set_trained(coarse, np.ascontiguousarray(pq, dtype=np.float32))
        return self

    d = property(lambda self: self._index.d, doc="Vector dimension.")
    ivf_d = property(
        lambda self: self._index.ivf_d,
        doc="Dimension of the coarse quantizer and the PQ: opq_d with an OPQ rotation, else d.",
    )
    opq_m = property(lambda self: self._index.opq_m, doc="OPQ sub-quantizers; 0: no rotation.")
    nlist = property(lambda self: self._index.nlist, doc="Number of inverted lists.")
    pq_m = property(lambda self: self._index.pq_m, doc="Sub-quantizers per vector.")
    pq_bits = property(lambda self: self._index.pq_bits, doc="Bits per sub-quantizer code.")
    metric = property(lambda self: self._index.metric, doc='"l2" or "ip".')
    ntotal = property(lambda self: self._index.ntotal, doc="Number of stored vectors.")
    seed = property(lambda self: self._index.seed, doc="Seed of k-means and of its subsampling.")
    by_residual = property(
        lambda self: self._index.by_residual, doc="The PQ codes residuals (True) or the vectors."
    )
    is_trained = property(lambda self: self._index.is_trained)
    is_mmapped = property(lambda self: self._index.is_mmapped, doc="Codes are memory-mapped.")
    coarse_objective = property(
        lambda self: self._index.coarse_objective,
        doc="k-means objective (sum of squared distances) of the last coarse training iteration.",
    )

    @property
    def niter(self) -> int:
        """k-means iterations for the coarse quantizer and the PQ (default 25, as faiss)."""
        return self._index.niter

    @niter.setter
    def niter(self, value: int) -> None:
        self._index.niter = value

    @property
    def max_points_per_centroid(self) -> int:
        """Training points per centroid beyond which training data is subsampled (default 256)."""
        return self._index.max_points_per_centroid

    @max_points_per_centroid.setter
    def max_points_per_centroid(self, value: int) -> None:
        self._index.max_points_per_centroid = value

    def list_sizes(self) -> np.ndarray:
        """(nlist,) int64: vectors per inverted list."""
        return self._index.list_sizes()

    def coarse_centroids(self) -> np.ndarray:
        """(nlist, ivf_d) float32 coarse centroids (empty before training)."""
        return self._index.coarse_centroids()

    def pq_centroids(self) -> np.ndarray:
        """(pq_m, 2**pq_bits, ivf_d // pq_m) float32 PQ centroids (pq_m rows only once trained)."""
        return self._index.pq_centroids()

    def rotation(self) -> np.ndarray | None:
        """(ivf_d, d) float32 OPQ rotation (orthonormal rows), or None (no OPQ, or not trained)."""
        return self._index.rotation()

    def set_rotation(self, rotation: Any) -> None:
        """Sets the OPQ rotation (ivf_d, d) float32 with orthonormal rows (e.g. another library's)
        of an index with opq_m > 0 and no vectors; its quantizers are then untrained."""
        self._index.set_rotation(as_float32_matrix(rotation, "OPQ rotation"))

    def rotate(self, x: Any) -> np.ndarray:
        """x (n, d) -> (n, ivf_d) float32: the vectors the quantizers see (R x with OPQ, else x)."""
        return self._index.rotate(as_float32_matrix(x, "vectors"))

    def list_codes(self, list_no: int) -> np.ndarray:
        """(list_size, pq_m) uint8: the PQ codes of list list_no's residuals, one row per vector."""
        return self._index.list_codes(int(list_no))

    def list_ids(self, list_no: int) -> np.ndarray:
        """(list_size,) int64: the ids of list list_no, in the order of :meth:`list_codes`."""
        return self._index.list_ids(int(list_no))

    def add_encoded(self, list_no: int, codes: Any, ids: Any) -> None:
        """Appends vectors already encoded to list list_no.

        Args:
            list_no: the list, 0 <= list_no < nlist.
            codes: (n, pq_m) uint8 PQ codes (< 2**pq_bits) of the residuals to that list's coarse
                centroid.
            ids: (n,) int64 ids.
        """
        codes = np.asarray(codes)
        if codes.dtype != np.uint8:
            raise ValueError(f"codes must be uint8, got dtype {codes.dtype}")
        if codes.ndim != 2 or codes.shape[1] != self.pq_m:
            raise ValueError(f"codes must have shape (n, pq_m={self.pq_m}), got {codes.shape}")
        self._index.add_encoded(
            int(list_no), np.ascontiguousarray(codes), as_int64_vector(ids, codes.shape[0])
        )

    def add_preassigned(self, list_of: Any, codes: Any, ids: Any = None) -> None:
        """Appends vectors encoded elsewhere (e.g. on a GPU), keeping input order inside each list.

        Args:
            list_of: (n,) int64 list of each vector, 0 <= list < nlist.
            codes: (n, pq_m) uint8 PQ codes of the residuals to those lists' centroids.
            ids: (n,) int64 ids, or None for ntotal .. ntotal+n-1.
        """
        list_of = as_int64_vector(list_of, len(list_of), "list_of")
        codes = np.asarray(codes)
        if codes.dtype != np.uint8:
            raise ValueError(f"codes must be uint8, got dtype {codes.dtype}")
        self._index.add_preassigned(
            list_of,
            np.ascontiguousarray(codes),
            None if ids is None else as_int64_vector(ids, list_of.shape[0]),
        )

    def train(self, x: Any, device: Any = None) -> None:
        """Trains the OPQ rotation (if opq_m > 0, on the CPU), then the coarse quantizer and the PQ
        on x (n, d); needs n >= nlist and n >= 2**pq_bits (and n >= 256 with OPQ).

        Args:
            x: training vectors (n, d).
            device: None or "cpu", or a CUDA device to run k-means there (the same algorithm with
                other random streams: :mod:`retro.index.kmeans`; needs a CUDA build and torch).
        """
        if device is not None and str(device) != "cpu":
            from retro.index.kmeans import train_ivfpq

            train_ivfpq(self, x, device)
            return
        x = as_float32_matrix(x, "training data")
        self.train_rotation(x)
        self._index.train(x)

    def train_rotation(self, x: Any) -> list[float]:
        """Trains and sets the OPQ rotation on x (n, d) (the quantizers are then untrained); does
        nothing without OPQ. Returns the reconstruction error of each training alternation
        (:class:`retro.index.opq.OpqTraining`; empty without OPQ)."""
        if self.opq_m == 0:
            return []
        x = as_float32_matrix(x, "training data")
        if x.shape[1] != self.d:
            raise ValueError(f"training data have dimension {x.shape[1]} but the index has d={self.d}")
        if not np.isfinite(x).all():
            raise ValueError("training data contain NaN or inf")
        opq = train_opq_rotation(x, self.ivf_d, self.opq_m, self.seed, self.opq_train_params)
        self.set_rotation(opq.rotation)
        return opq.errors

    def add(self, x: Any, ids: Any = None) -> None:
        """Encodes and stores x (n, d) with ids (n,) int64, or ntotal .. ntotal+n-1 if None."""
        x = as_float32_matrix(x, "added vectors")
        self._index.add(x, None if ids is None else as_int64_vector(ids, x.shape[0]))

    def search(
        self,
        x: Any,
        k: int,
        nprobe: int = 8,
        rerank: np.ndarray | None = None,
        k_factor: int = 4,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Searches the nprobe nearest lists of each query.

        Args:
            x: queries (n, d).
            k: results per query (> 0).
            nprobe: lists visited per query; values above nlist are clamped to nlist.
            rerank: optional (N, d) float32 or float16 array (a np.memmap works: only candidate rows
                are read) whose row i is the vector of id i. Then k * k_factor PQ candidates are
                re-scored with exact distances and the best k returned.
            k_factor: candidate multiplier for re-ranking.

        Returns:
            D (n, k) float32 and I (n, k) int64, best first.
        """
        k = as_count(k, "k")
        nprobe = min(as_count(nprobe, "nprobe"), self.nlist)  # above nlist: all lists
        k_factor = min(int(k_factor), 1 << 20)  # beyond, k * k_factor covers any index alike
        return self._index.search(
            as_float32_matrix(x, "queries"), k, nprobe, _as_rerank(rerank), k_factor
        )

    def rerank_candidates(
        self, x: Any, candidates: Any, k: int, rerank: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact re-scoring step of a re-ranked :meth:`search`, on candidates found
        elsewhere (e.g. merged from shards of this index, see :mod:`retro.index.shard_search`).

        Args:
            x: queries (n, d).
            candidates: (n, c) int64 ids, -1 skipped; rerank row id is the vector of id.
            k: results per query (> 0).
            rerank: (N, d) float32 or float16 vectors by id, as in :meth:`search`.

        Returns:
            D (n, k) float32 and I (n, k) int64, best first by (exact distance, id), as
            :meth:`search` with ``rerank`` returns them for the same candidates.
        """
        x = as_float32_matrix(x, "queries")
        candidates = np.asarray(candidates)
        if candidates.dtype.kind not in "iu":
            raise ValueError(f"candidates must be integer ids, got dtype {candidates.dtype}")
        candidates = np.ascontiguousarray(candidates, dtype=np.int64)
        return self._index.rerank_candidates(x, candidates, as_count(k, "k"), _as_rerank(rerank))

    def reset(self) -> None:
        """Removes all stored vectors; the training is kept."""
        self._index.reset()

    def save(self, path: str | os.PathLike) -> None:
        """Writes the index atomically (temp file + rename) in retro's versioned, checksummed format."""
        self._index.save(os.fspath(path))

    def to(self, device: Any) -> Any:
        """This index for "cpu"; for a CUDA device ("cuda", "cuda:1", a torch.device) a
        :class:`retro.index.cuda.CudaIvfPqIndex`: a device-resident copy searched on the GPU (8-bit
        PQ of residuals; needs a CUDA build and torch with CUDA)."""
        if str(device) == "cpu":
            return self
        from retro.index.cuda import CudaIvfPqIndex

        return CudaIvfPqIndex(self, device)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        mmap: bool = True,
        verify: bool = True,
        device: Any = None,
    ) -> Any:
        """Loads an index saved by :meth:`save`.

        Args:
            mmap: map the codes and ids instead of reading them (the index is then read-only).
            verify: check every section's checksum (the default: one xxh64 pass over the file,
                docs/RELIABILITY.md gives its cost); False skips the codes, ids and terms (the
                small sections are always verified).
            device: None or "cpu" for this host index; a CUDA device for its device copy
                (:meth:`to`).
        """
        try:
            loaded = _core.IvfPqIndex.load(os.fspath(path), bool(mmap), bool(verify))
        except RuntimeError as error:
            raise IndexFileError(str(error)) from None
        index = cls._wrap(loaded)
        return index if device is None else index.to(device)

    def __repr__(self) -> str:
        return (
            f"IvfPqIndex(d={self.d}, "
            + (f"opq_m={self.opq_m}, opq_d={self.ivf_d}, " if self.opq_m else "")
            + f"nlist={self.nlist}, pq_m={self.pq_m}, pq_bits={self.pq_bits}, "
            f"metric={self.metric!r}, by_residual={self.by_residual}, ntotal={self.ntotal}, "
            f"trained={self.is_trained})"
        )


def _as_rerank(rerank: Any) -> Any:
    """Re-ranking vectors as numpy (a CPU copy of a torch tensor); None stays None."""
    if rerank is not None and type(rerank).__module__.startswith("torch"):
        return rerank.detach().cpu().numpy()
    return rerank
