"""``torch.ops.retro.ivfpq_search``: the GPU IVF-PQ search (cuda/ivf_pq.cu) as a torch custom op,
so that it runs on torch's current stream, inside CUDA graphs and under ``torch.compile``.

The op takes the device index as the tensors :class:`retro.index.cuda.CudaIvfPqIndex` uploads
(:meth:`~retro.index.cuda.CudaIvfPqIndex.op_args` gives them in order); most callers use
``CudaIvfPqIndex.search``, which checks its input first and calls this op.
"""

from __future__ import annotations

import torch

from retro import _core

SCHEMA = (
    "(Tensor x, Tensor coarse_centroids, Tensor coarse_norms, Tensor pq_centroids_t, Tensor codes, "
    "Tensor offsets, Tensor sizes, Tensor ids, Tensor terms, str metric, int max_list_size, int k, "
    "int nprobe, bool fp16_lut) -> (Tensor, Tensor)"
)


def _search_cuda(
    x: torch.Tensor,
    coarse_centroids: torch.Tensor,
    coarse_norms: torch.Tensor,
    pq_centroids_t: torch.Tensor,
    codes: torch.Tensor,
    offsets: torch.Tensor,
    sizes: torch.Tensor,
    ids: torch.Tensor,
    terms: torch.Tensor,
    metric: str,
    max_list_size: int,
    k: int,
    nprobe: int,
    fp16_lut: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, d) float32 on the index's device -> distances (n, k) float32, labels (n, k) int64.

    Index tensors: coarse_centroids (nlist, d) float32, coarse_norms (nlist,) float32,
    pq_centroids_t (pq_m, d // pq_m, 256) float32, codes (offsets[-1] * pq_m,) uint8 in blocks of
    64 vectors, offsets (nlist + 1,) int64, sizes (nlist,) int64, ids (offsets[-1],) int64,
    terms (offsets[-1],) float32 (L2; ignored for "ip").
    """
    if not _core.has_cuda():
        raise RuntimeError("this build of retro has no CUDA kernels (rebuild with RETRO_ENABLE_CUDA=ON)")
    if x.dtype != torch.float32 or x.ndim != 2:
        raise ValueError(f"queries must be a 2-D float32 tensor, got {x.dtype} of shape {tuple(x.shape)}")
    x = x.contiguous()
    l2 = metric == "l2"
    index = _core.IvfPqDeviceIndex(
        coarse_centroids.shape[1], pq_centroids_t.shape[0], coarse_centroids.shape[0], metric,
        coarse_centroids.data_ptr(), coarse_norms.data_ptr() if l2 else 0, pq_centroids_t.data_ptr(),
        codes.data_ptr(), offsets.data_ptr(), sizes.data_ptr(), ids.data_ptr(),
        terms.data_ptr() if l2 else 0, max_list_size,
    )
    device = x.device.index
    why = _core.cuda_ivfpq_search_unsupported(index, nprobe, k, fp16_lut, device)
    if why:
        raise ValueError(f"GPU IVF-PQ search: {why}")
    n = x.shape[0]
    distances = torch.empty((n, k), dtype=torch.float32, device=x.device)
    labels = torch.empty((n, k), dtype=torch.int64, device=x.device)
    workspace_bytes = _core.cuda_ivfpq_search_workspace(index, n, nprobe, k, fp16_lut, device)
    workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=x.device)
    _core.cuda_ivfpq_search(
        index, n, x.data_ptr(), nprobe, k, fp16_lut, distances.data_ptr(), labels.data_ptr(),
        workspace.data_ptr(), workspace_bytes, device, torch.cuda.current_stream(x.device).cuda_stream,
    )
    return distances, labels


ivfpq_search = torch.library.custom_op(
    "retro::ivfpq_search", _search_cuda, mutates_args=(), device_types="cuda", schema=SCHEMA
)


@ivfpq_search.register_fake
def _(x, coarse_centroids, coarse_norms, pq_centroids_t, codes, offsets, sizes, ids, terms, metric,
      max_list_size, k, nprobe, fp16_lut):
    n = x.shape[0]
    return x.new_empty((n, k), dtype=torch.float32), x.new_empty((n, k), dtype=torch.int64)
