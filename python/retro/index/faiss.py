"""Conversion between :class:`retro.IvfPqIndex` and faiss's ``IndexIVFPQ`` (needs faiss installed).

Both are the same IVFADC index: a flat coarse quantizer, and a product quantizer of 8-bit (or
4-bit) codes on the residuals, sub-quantizer m coding dimensions [m * dsub, (m + 1) * dsub). The
conversion copies the centroids, the codes and the ids, list by list; for 8-bit codes searches at
equal nprobe then give the same results (up to the rounding of the distances and the order of
ties). A retro 4-bit (fast-scan) index goes to and comes from a faiss 4-bit ``IndexIVFPQ``
("IVF..,PQ<m>x4"), whose codes are packed two per byte, sub-quantizer 2i in the low nibble; faiss's
own fast-scan index (``IndexIVFPQFastScan``) keeps its codes in an internal blocked layout that its
Python API does not expose, so it is refused.

An OPQ index (``opq_m > 0``) is faiss's ``IndexPreTransform`` of an ``OPQMatrix`` (the rotation,
A = R, no bias) in front of that ``IndexIVFPQ``, as ``faiss.index_factory(d,
"OPQ16_64,IVF64,PQ16")`` builds it: both directions carry the rotation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retro.index.flat import Metric
from retro.index.ivf_pq import IvfPqIndex


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "retro.index.faiss needs faiss: pip install faiss-cpu (or faiss-gpu)"
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
    """Returns a faiss ``IndexIVFPQ`` holding index's quantizers, codes and ids, behind an
    ``IndexPreTransform`` with an ``OPQMatrix`` if index has an OPQ rotation.

    The coarse quantizer is an ``IndexFlatL2`` (metric "l2") or ``IndexFlatIP`` (metric "ip") of
    the (nlist, ivf_d) coarse centroids; a 4-bit index gives a 4-bit ``IndexIVFPQ`` (faiss scans
    it with float tables). An untrained index gives an untrained faiss index.
    """
    faiss = _import_faiss()
    ivf = _to_faiss_ivfpq(faiss, index)
    if index.opq_m == 0:
        return ivf
    opq = faiss.OPQMatrix(index.d, index.opq_m, index.ivf_d)
    rotation = index.rotation()
    if rotation is not None:
        faiss.copy_array_to_vector(rotation.ravel(), opq.A)
        opq.is_orthonormal = True
        opq.is_trained = True
    return faiss.IndexPreTransform(opq, ivf)  # keeps references to both


def _to_faiss_ivfpq(faiss: Any, index: IvfPqIndex) -> Any:
    """The IndexIVFPQ part of to_faiss: it works in ivf_d dimensions."""
    l2 = index.metric == "l2"
    d = index.ivf_d
    quantizer = faiss.IndexFlatL2(d) if l2 else faiss.IndexFlatIP(d)
    metric = faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT
    # faiss's Python constructor keeps a reference to the quantizer
    out = faiss.IndexIVFPQ(quantizer, d, index.nlist, index.pq_m, index.pq_bits, metric)
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
    become a retro fast-scan index), alone or behind an ``IndexPreTransform`` holding just an
    ``OPQMatrix``, is accepted; any other kind (other transforms, ``IndexIVFPQFastScan``,
    ``IndexIVFFlat``, an HNSW quantizer, ...) raises ValueError naming it. An untrained faiss
    index gives an untrained retro index.
    """
    faiss = _import_faiss()
    index = faiss.downcast_index(faiss_index)
    if not isinstance(index, faiss.IndexPreTransform):
        return _from_faiss_ivfpq(faiss, index, None)
    transforms = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
    # faiss reads an OPQMatrix back from a file as a LinearTransform with orthonormal rows
    is_rotation = len(transforms) == 1 and (
        type(transforms[0]) is faiss.OPQMatrix
        or (type(transforms[0]) is faiss.LinearTransform and transforms[0].is_orthonormal)
    )
    if not is_rotation:
        names = ", ".join(type(t).__name__ for t in transforms)
        raise ValueError(
            f"from_faiss takes an IndexPreTransform holding one OPQMatrix (retro's only "
            f"pre-transform), got one with [{names}]"
        )
    opq = transforms[0]
    if opq.d_out > opq.d_in:
        raise ValueError(
            f"from_faiss needs an OPQ rotation to at most d={opq.d_in} dimensions, got d_out={opq.d_out}"
        )
    if opq.is_trained and opq.b.size() and np.any(faiss.vector_to_array(opq.b)):
        raise ValueError("from_faiss needs an OPQMatrix without a bias (b = 0)")
    rotation = faiss.vector_to_array(opq.A).reshape(opq.d_out, opq.d_in) if opq.is_trained else None
    return _from_faiss_ivfpq(faiss, faiss.downcast_index(index.index), (opq, rotation))


def _from_faiss_ivfpq(faiss: Any, ivf: Any, opq: tuple[Any, np.ndarray | None] | None) -> IvfPqIndex:
    """from_faiss of an IndexIVFPQ, with opq = (its OPQMatrix or orthonormal LinearTransform, the
    trained rotation or None). A LinearTransform has no OPQ sub-quantizer count: pq_m stands in."""
    kind = type(ivf).__name__
    if type(ivf) is not faiss.IndexIVFPQ:
        behind = " behind the OPQ transform" if opq is not None else ""
        raise ValueError(f"from_faiss needs a faiss IndexIVFPQ{behind}, got a {kind}")
    quantizer = faiss.downcast_index(ivf.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat):
        raise ValueError(
            "from_faiss needs an IndexIVFPQ with a flat coarse quantizer (IndexFlatL2 or "
            f"IndexFlatIP), got one with a {type(quantizer).__name__} quantizer"
        )
    metrics: dict[int, Metric] = {faiss.METRIC_L2: "l2", faiss.METRIC_INNER_PRODUCT: "ip"}
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
    rotation = None if opq is None else opq[1]
    if not ivf.is_trained:
        if opq is None:
            return IvfPqIndex(d, nlist, pq_m, nbits, metric, by_residual=ivf.by_residual)
        untrained = IvfPqIndex(opq[0].d_in, nlist, pq_m, nbits, metric,
                               by_residual=ivf.by_residual, opq_m=_opq_m(opq[0], pq_m), opq_d=d)
        if rotation is not None:
            untrained.set_rotation(rotation)
        return untrained
    if opq is not None and rotation is None:
        raise ValueError("the faiss IndexIVFPQ is trained but the OPQMatrix in front of it is not")

    if quantizer.ntotal != nlist:
        raise ValueError(
            f"the coarse quantizer holds {quantizer.ntotal} centroids, not nlist={nlist}"
        )
    coarse = quantizer.reconstruct_n(0, nlist)  # (nlist, d)
    pq = faiss.vector_to_array(ivf.pq.centroids).reshape(pq_m, ivf.pq.ksub, ivf.pq.dsub)
    index = IvfPqIndex.from_trained(
        coarse, pq, metric, by_residual=ivf.by_residual, rotation=rotation,
        opq_m=None if opq is None else _opq_m(opq[0], pq_m),
    )
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


def _opq_m(transform: Any, pq_m: int) -> int:
    """The OPQ sub-quantizer count of an OPQMatrix; pq_m for a plain LinearTransform."""
    return int(getattr(transform, "M", pq_m))
