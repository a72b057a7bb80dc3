"""The retrieval index (numpy in, numpy out; no torch unless a CUDA device is asked for).

Vectors are float32 rows: x has shape (n, d). Searches return ``(D, I)``: distances (n, k) float32
and labels (n, k) int64, best first. Where fewer than k results exist, labels are -1 and
distances +inf (L2) or -inf (inner product). L2 distances are squared.

- :mod:`~retro.index.ivf_pq`: :class:`IvfPqIndex`, and the hand-off to a CUDA device;
  :mod:`~retro.index.flat`: :class:`FlatIndex` (exact search); :mod:`~retro.index.opq`: OPQ
  rotations; :mod:`~retro.index.factory`: faiss-style description strings.
- :mod:`~retro.index.cuda`: the device copy of an IVF-PQ index; :mod:`~retro.index.kmeans`: its
  training on a GPU (both need torch).
- :mod:`~retro.index.sharding`: an index as shard files; :mod:`~retro.index.shard_search`: their
  merged searches (one process, torch.distributed ranks, GPUs).
- :mod:`~retro.index.faiss`: conversion to and from faiss; :mod:`~retro.index.cli`: ``retro index``.
"""

from retro.index.factory import index_factory
from retro.index.faiss import from_faiss, to_faiss
from retro.index.flat import FlatIndex, Metric
from retro.index.ivf_pq import IvfPqIndex

__all__ = ["FlatIndex", "IvfPqIndex", "Metric", "from_faiss", "index_factory", "to_faiss"]
