"""Conversion between :class:`retro.IvfPqIndex` and faiss's ``IndexIVFPQ`` (needs faiss installed).

Both are the same IVFADC index: a flat coarse quantizer, and a product quantizer of 8-bit (or
4-bit) codes on the residuals, sub-quantizer m coding dimensions [m * dsub, (m + 1) * dsub). The
conversion copies the centroids, the codes and the ids, list by list; for 8-bit codes searches at
equal nprobe then give the same results (up to the rounding of the distances and the order of
ties). A retro 4-bit (fast-scan) index goes to and comes from a faiss 4-bit ``IndexIVFPQ``
("IVF..,PQ<m>x4"), whose codes are packed two per byte, sub-quantizer 2i in the low nibble; faiss's
own fast-scan index (``IndexIVFPQFastScan``) keeps its codes in an internal blocked layout that its
Python API does not expose, so it is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retro.index import IvfPqIndex


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "retro.faiss_interop needs faiss: pip install faiss-cpu (or faiss-gpu)"
        ) from e
    return faiss


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(n, pq_m) codes < 16 -> (n, ceil(pq_m / 2)) bytes, code 2i in the low nibble of byte i."""
    n, pq_m = codes.shape
    padded = np.zeros((n, pq_m + pq_m % 2), np.uint8)
    padded[:, :pq_m] = codes
    return np.ascontiguousarray(padded[:, 0::2] | (padded[:, 1::2] << 4))


def _unpack_nibbles(packed: np.ndarray, pq_m: int) -> np.ndarray:
    """The inverse of _pack_nibbles: (n, ceil(pq_m / 2)) bytes -> (n, pq_m) codes."""
    codes = np.empty((packed.shape[0], 2 * packed.shape[1]), np.uint8)
    codes[:, 0::2], codes[:, 1::2] = packed & 0xF, packed >> 4
    return np.ascontiguousarray(codes[:, :pq_m])


def to_faiss(index: IvfPqIndex) -> Any:
    """Returns a faiss ``IndexIVFPQ`` holding index's quantizers, codes and ids.

    The coarse quantizer is an ``IndexFlatL2`` (metric "l2") or ``IndexFlatIP`` (metric "ip") of
    the (nlist, d) coarse centroids; a 4-bit index gives a 4-bit ``IndexIVFPQ`` (faiss scans it
    with float tables). An untrained index gives an untrained faiss index.
    """
    faiss = _import_faiss()
    l2 = index.metric == "l2"
    quantizer = faiss.IndexFlatL2(index.d) if l2 else faiss.IndexFlatIP(index.d)
    metric = faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT
    # faiss's Python constructor keeps a reference to the quantizer
    out = faiss.IndexIVFPQ(quantizer, index.d, index.nlist, index.pq_m, index.pq_bits, metric)
    out.by_residual = index.by_residual
    pack = _pack_nibbles if index.pq_bits == 4 else np.ascontiguousarray
    if not index.is_trained:
        return out
    quantizer.add(index.coarse_centroids())
    faiss.copy_array_to_vector(index.pq_centroids().ravel(), out.pq.centroids)
    out.is_trained = True
    for list_no in range(index.nlist):
        ids = index.list_ids(list_no)
        if len(ids) > 0:
            codes = pack(index.list_codes(list_no))
            out.invlists.add_entries(list_no, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    out.ntotal = index.ntotal
    # As faiss's training does: for L2 the per-(list, code) terms table, if it fits in
    # precomputed_table_max_bytes (else, and for IP, the search computes residuals per list).
    out.precompute_table()
    return out


def from_faiss(faiss_index: Any) -> IvfPqIndex:
    """Returns a :class:`retro.IvfPqIndex` holding a faiss index's quantizers, codes and ids.

    Only an ``IndexIVFPQ`` (L2 or inner product) with a flat coarse quantizer (``IndexFlatL2`` or
    ``IndexFlatIP``, of the index's metric), residual encoding and 8-bit or 4-bit codes (the latter
    become a retro fast-scan index) is accepted; any
    other kind (``IndexPreTransform``/OPQ, ``IndexIVFPQFastScan``, ``IndexIVFFlat``, an HNSW
    quantizer, ...) raises ValueError naming it. An untrained faiss index gives an untrained retro index.
    """
    faiss = _import_faiss()
    ivf = faiss.downcast_index(faiss_index)
    kind = type(ivf).__name__
    if type(ivf) is not faiss.IndexIVFPQ:
        hint = (
            " (a transform such as OPQ in front of the IVF: retro has no pre-transforms)"
            if isinstance(ivf, faiss.IndexPreTransform)
            else ""
        )
        raise ValueError(f"from_faiss needs a faiss IndexIVFPQ, got a {kind}{hint}")
    quantizer = faiss.downcast_index(ivf.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat):
        raise ValueError(
            "from_faiss needs an IndexIVFPQ with a flat coarse quantizer (IndexFlatL2 or "
            f"IndexFlatIP), got one with a {type(quantizer).__name__} quantizer"
        )
    metrics = {faiss.METRIC_L2: "l2", faiss.METRIC_INNER_PRODUCT: "ip"}
    if ivf.metric_type not in metrics:
        raise ValueError(
            f"from_faiss supports the L2 and inner product metrics, got metric {ivf.metric_type}"
        )
    if quantizer.metric_type != ivf.metric_type:
        raise ValueError(
            f"the coarse quantizer's metric ({quantizer.metric_type}) differs from the "
            f"IndexIVFPQ's ({ivf.metric_type}): retro assigns lists with the index's metric"
        )
    if not ivf.by_residual and ivf.pq.nbits != 4:
        raise ValueError(
            "from_faiss needs an IndexIVFPQ that encodes residuals (by_residual=True), or 4-bit "
            "codes (retro's by_residual=False is 4-bit only)"
        )
    if ivf.pq.nbits not in (4, 8):
        raise ValueError(f"from_faiss needs 8-bit or 4-bit PQ codes, got pq.nbits={ivf.pq.nbits}")
    d, nlist, pq_m, nbits = ivf.d, ivf.nlist, ivf.pq.M, ivf.pq.nbits
    metric = metrics[ivf.metric_type]
    if not ivf.is_trained:
        return IvfPqIndex(d, nlist, pq_m, nbits, metric, by_residual=ivf.by_residual)

    if quantizer.ntotal != nlist:
        raise ValueError(
            f"the coarse quantizer holds {quantizer.ntotal} centroids, not nlist={nlist}"
        )
    coarse = quantizer.reconstruct_n(0, nlist)  # (nlist, d)
    pq = faiss.vector_to_array(ivf.pq.centroids).reshape(pq_m, ivf.pq.ksub, ivf.pq.dsub)
    index = IvfPqIndex.from_trained(coarse, pq, metric, by_residual=ivf.by_residual)
    invlists = ivf.invlists
    code_size = invlists.code_size
    for list_no in range(nlist):
        n = invlists.list_size(list_no)
        if n == 0:
            continue
        codes_ptr = invlists.get_codes(list_no)
        ids_ptr = invlists.get_ids(list_no)
        try:
            codes = np.array(faiss.rev_swig_ptr(codes_ptr, n * code_size)).reshape(n, code_size)
            if nbits == 4:
                codes = _unpack_nibbles(codes, pq_m)
            ids = np.array(faiss.rev_swig_ptr(ids_ptr, n))
        finally:
            invlists.release_codes(list_no, codes_ptr)
            invlists.release_ids(list_no, ids_ptr)
        index.add_encoded(list_no, codes, ids)
    return index
