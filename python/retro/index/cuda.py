"""IVF-PQ on a CUDA device: a device-resident copy of a trained :class:`retro.IvfPqIndex`.

The copy holds the same quantizers and lists as the host index (the file format does not change):
``IvfPqIndex.to("cuda")`` or ``IvfPqIndex.load(path, device="cuda")`` make one, ``.cpu()`` gives
the host index back. Searches take numpy arrays or torch tensors; CUDA tensors on the index's
device are read in place (no host copy) and the results stay there, numpy in gives numpy out. The
kernels (cuda/ivf_pq.cu) follow the CPU index's distance decomposition, so the results are the
CPU's up to float rounding at near-ties. An OPQ index's rotation goes to the device too: queries
and added vectors are rotated there with one matmul (:meth:`CudaIvfPqIndex.rotate`) before the
kernels see them; re-ranking uses the original vectors, as on the CPU.

An index larger than one GPU is searched as shards (disjoint id ranges with the same quantizers):
:func:`retro.index.shard_search.search_shards` uploads each shard in turn (or keeps the ones given
as device indexes, e.g. one per GPU) and merges by (distance, id) with :func:`merge_top_k`.

This module does not import the host index (:mod:`retro.index.ivf_pq` imports this one): the host
index reaches it as an object.

Needs a CUDA build of retro (``retro.has_cuda()``) and torch with CUDA: torch owns every device
buffer, so that the kernels run on torch's current stream and share its allocator.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from retro import _core
from retro._arrays import as_float32_matrix, as_int64_vector
from retro.ops.ivfpq import ivfpq_search
from retro.index.topk_merge import merge_top_k

MAX_MAGNITUDE = 1e15  # as the CPU index (cpp/src/distances.h: kMaxMagnitude)


def cuda_device(device: Any) -> torch.device:
    """A CUDA torch.device with an index; ValueError for another device type, RuntimeError
    without a CUDA build or a usable GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"a CUDA index needs a cuda device, got {device}")
    if not _core.has_cuda():
        raise RuntimeError("this build of retro has no CUDA kernels (rebuild with RETRO_ENABLE_CUDA=ON)")
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no usable CUDA device")
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


class CudaIvfPqIndex:
    """A trained 8-bit IVF-PQ index (PQ of residuals) copied to a GPU for search and encoding.

    Args:
        index: the host :class:`retro.IvfPqIndex` (kept: :meth:`add` appends to it and uploads
            again).
        device: a CUDA device ("cuda", "cuda:1", torch.device).
    """

    def __init__(self, index: Any, device: Any = "cuda") -> None:
        if not index.is_trained:
            raise ValueError("only a trained index can go to the GPU: call train() first")
        if index.pq_bits != 8 or not index.by_residual:
            raise ValueError(
                f"the GPU index takes 8-bit PQ of residuals, got pq_bits={index.pq_bits}, "
                f"by_residual={index.by_residual}"
            )
        self.host = index
        self.device = cuda_device(device)
        self._upload()

    d = property(lambda self: self.host.d, doc="Vector dimension.")
    nlist = property(lambda self: self.host.nlist, doc="Number of inverted lists.")
    pq_m = property(lambda self: self.host.pq_m, doc="Sub-quantizers per vector.")
    metric = property(lambda self: self.host.metric, doc='"l2" or "ip".')
    ntotal = property(lambda self: self.host.ntotal, doc="Number of stored vectors.")

    def _upload(self) -> None:
        """Copies the host index's quantizers and concatenated lists to the device."""
        host = self.host
        lists = host._index.concatenated_lists()

        def up(array: np.ndarray) -> torch.Tensor:  # never empty: every address stays valid
            array = np.ascontiguousarray(array)
            if array.size == 0:
                array = np.zeros(1, dtype=array.dtype)
            return torch.from_numpy(array).to(self.device)

        coarse = host.coarse_centroids()
        pq_t = np.ascontiguousarray(host.pq_centroids().transpose(0, 2, 1))  # (pq_m, dsub, 256)
        self._rotation = None if host.opq_m == 0 else up(host.rotation())  # (ivf_d, d)
        self._buffers = {
            "coarse": up(coarse),
            "norms": up(np.einsum("ij,ij->i", coarse, coarse).astype(np.float32)),
            "pq_t": up(pq_t),
            **{name: up(lists[name]) for name in ("codes", "offsets", "sizes", "ids", "terms")},
        }
        b = self._buffers
        l2 = host.metric == "l2"
        self._max_list_size = int(lists["sizes"].max(initial=0))
        self._core = _core.IvfPqDeviceIndex(
            host.ivf_d, host.pq_m, host.nlist, host.metric, b["coarse"].data_ptr(),
            b["norms"].data_ptr() if l2 else 0, b["pq_t"].data_ptr(), b["codes"].data_ptr(),
            b["offsets"].data_ptr(), b["sizes"].data_ptr(), b["ids"].data_ptr(),
            b["terms"].data_ptr() if l2 else 0, self._max_list_size,
        )

    def _queries(self, x: Any, name: str) -> tuple[torch.Tensor, str]:
        """x as a contiguous float32 (n, d) tensor on the device, and how to return results:
        "numpy", "cpu" (a CPU torch tensor came in) or "device"."""
        if isinstance(x, torch.Tensor):
            if not x.dtype.is_floating_point:
                raise ValueError(f"{name} must hold floating-point values, got dtype {x.dtype}")
            if x.ndim != 2:
                raise ValueError(f"{name} must be a 2-D tensor (n, d), got shape {tuple(x.shape)}")
            if x.device.type == "cuda" and x.device != self.device:
                raise ValueError(f"{name} are on {x.device} but the index is on {self.device}")
            kind = "device" if x.device.type == "cuda" else "cpu"
            x = x.detach().to(self.device, torch.float32).contiguous()
        else:
            kind = "numpy"
            x = torch.as_tensor(as_float32_matrix(x, name), device=self.device)
        if x.shape[1] != self.d:
            raise ValueError(f"{name} have dimension {x.shape[1]} but the index has d={self.d}")
        # one sync (eager calls only; compiled graphs skip it); NaN fails the comparison too
        if x.numel() and not torch.compiler.is_compiling() and not bool((x.abs() <= MAX_MAGNITUDE).all()):
            raise ValueError(f"{name} hold NaN, inf or values beyond {MAX_MAGNITUDE:g}")
        return x, kind

    def rotate(self, xq: torch.Tensor) -> torch.Tensor:
        """xq (n, d) float32 on the device -> (n, ivf_d): the OPQ-rotated vectors the kernels (and
        :meth:`op_args`'s op) take, or xq itself without OPQ."""
        return xq if self._rotation is None else (xq @ self._rotation.T).contiguous()

    def _stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    def search(
        self,
        x: Any,
        k: int,
        nprobe: int = 8,
        fp16_lut: bool = False,
        rerank: Any = None,
        k_factor: int = 4,
    ) -> tuple[Any, Any]:
        """Searches the nprobe nearest lists of each query on the GPU.

        Args:
            x: queries (n, d): numpy, a CPU tensor, or a CUDA tensor on this index's device (read
                in place when float32 and contiguous).
            k: results per query, 1 .. 1024.
            nprobe: lists visited per query (1 .. 1024; values above nlist are clamped to nlist).
            fp16_lut: look-up tables in float16 (half the shared memory; sums stay float32).
            rerank: optional (N, d) float32 or float16 vectors whose row i is the vector of id i,
                best as a CUDA tensor on this device (numpy is copied there on every call): then
                k * k_factor PQ candidates (at most 1024) are re-scored exactly and the best k
                kept, as :meth:`retro.IvfPqIndex.search` with ``rerank`` does.
            k_factor: candidate multiplier for re-ranking.

        Returns:
            D (n, k) float32 and I (n, k) int64, best first by (distance, id), as
            :meth:`retro.IvfPqIndex.search`; numpy for numpy input, else tensors on x's device.
        """
        if not isinstance(nprobe, (int, np.integer)) or nprobe <= 0:
            raise ValueError(f"nprobe must be a positive integer, got {nprobe!r}")
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not isinstance(k_factor, (int, np.integer)) or k_factor < 1:
            raise ValueError(f"k_factor must be an integer >= 1, got {k_factor!r}")
        xq, kind = self._queries(x, "queries")
        candidates = int(k) * int(k_factor) if rerank is not None else int(k)
        distances, labels = ivfpq_search(
            self.rotate(xq), *self.op_args(), candidates, int(nprobe), bool(fp16_lut)
        )
        if rerank is not None:
            distances, labels = self._rerank(xq, labels, self._rerank_vectors(rerank), int(k))
        return results_for(distances, labels, kind)

    def _rerank_vectors(self, rerank: Any) -> torch.Tensor:
        """The re-ranking vectors as an (N, d) float32 or float16 tensor on the device."""
        vectors = rerank if isinstance(rerank, torch.Tensor) else torch.as_tensor(np.asarray(rerank))
        if vectors.ndim != 2 or vectors.shape[1] != self.d or vectors.dtype not in (torch.float32, torch.float16):
            raise ValueError(
                f"rerank vectors must be (N, d={self.d}) float32 or float16, got {vectors.dtype} "
                f"of shape {tuple(vectors.shape)}"
            )
        return vectors.to(self.device)

    def _rerank(
        self, xq: torch.Tensor, candidates: torch.Tensor, vectors: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact distances of the candidates (n, kc) -> the best k by (distance, id)."""
        if not torch.compiler.is_compiling() and bool((candidates >= vectors.shape[0]).any()):
            raise ValueError(f"rerank vectors have {vectors.shape[0]} rows but the index holds larger ids")
        rows_per_chunk = max(1, (1 << 28) // max(1, candidates.shape[1] * self.d))
        scores = []
        for s in range(0, xq.shape[0], rows_per_chunk):  # (chunk, kc, d) stays under 1 GiB
            rows = vectors[candidates[s : s + rows_per_chunk].clamp(min=0)].float()
            q = xq[s : s + rows_per_chunk, None, :]
            scores.append(((rows - q) ** 2).sum(-1) if self.metric == "l2" else (rows * q).sum(-1))
        return merge_top_k([torch.cat(scores)], [candidates], k, self.metric)

    def op_args(self) -> tuple:
        """The index arguments of ``torch.ops.retro.ivfpq_search`` (retro.ops.ivfpq), in order:
        its tensors, then metric and max_list_size; its queries are :meth:`rotate`'s output."""
        b = self._buffers
        return (b["coarse"], b["norms"], b["pq_t"], b["codes"], b["offsets"], b["sizes"], b["ids"],
                b["terms"], self.metric, self._max_list_size)

    def encode(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The GPU half of :meth:`add`: x (n, d) -> lists (n,) int64 and codes (n, pq_m) uint8 of
        the residuals, on the device."""
        xq, _ = self._queries(x, "added vectors")
        xq = self.rotate(xq)
        n, dev = xq.shape[0], self.device.index
        list_of = torch.empty(n, dtype=torch.int64, device=self.device)
        codes = torch.empty((n, self.pq_m), dtype=torch.uint8, device=self.device)
        bytes_ = _core.cuda_ivfpq_encode_workspace(self._core, n, dev)
        workspace = torch.empty(max(bytes_, 1), dtype=torch.uint8, device=self.device)
        _core.cuda_ivfpq_encode(
            self._core, n, xq.data_ptr(), list_of.data_ptr(), codes.data_ptr(),
            workspace.data_ptr(), bytes_, dev, self._stream(),
        )
        return list_of, codes

    def add(self, x: Any, ids: Any = None) -> None:
        """Encodes x (n, d) on the GPU, appends the codes to the host index (ids (n,) int64, or
        ntotal .. ntotal+n-1 if None) and uploads the index again."""
        list_of, codes = self.encode(x)
        host_ids = None if ids is None else as_int64_vector(ids, int(list_of.shape[0]))
        self.host.add_preassigned(list_of.cpu().numpy(), codes.cpu().numpy(), host_ids)
        self._upload()

    def cpu(self) -> Any:
        """The host index this copy was made from (with everything added through the copy)."""
        return self.host

    def to(self, device: Any) -> Any:
        """The host index for "cpu", this copy for its own device, else a copy on `device`."""
        if torch.device(device).type == "cpu":
            return self.host
        target = cuda_device(device)
        return self if target == self.device else CudaIvfPqIndex(self.host, target)

    def save(self, path: str | os.PathLike) -> None:
        """Saves the host index (the same file format as :meth:`retro.IvfPqIndex.save`)."""
        self.host.save(path)

    def __repr__(self) -> str:
        return (
            f"CudaIvfPqIndex(d={self.d}, nlist={self.nlist}, pq_m={self.pq_m}, metric={self.metric!r}, "
            f"ntotal={self.ntotal}, device={self.device})"
        )


def results_for(distances: torch.Tensor, labels: torch.Tensor, kind: str) -> tuple[Any, Any]:
    if kind == "numpy":
        return distances.cpu().numpy(), labels.cpu().numpy()
    if kind == "cpu":
        return distances.cpu(), labels.cpu()
    return distances, labels


