"""faiss-style index description strings: "IVF1024,PQ48", "IVF4096,PQ96x8", "IVF1024,PQ96x4fs", "Flat"."""

from __future__ import annotations

import re

from retro.index import FlatIndex, IvfPqIndex, Metric

_IVF_PQ = re.compile(r"^IVF(\d+),PQ(\d+)(?:x(\d+))?(fs)?$")


def index_factory(d: int, description: str, metric: Metric = "l2", seed: int = 0) -> IvfPqIndex | FlatIndex:
    """Builds an empty index from a faiss-style description.

    Supported: ``"Flat"`` (exact search), ``"IVF<nlist>,PQ<pq_m>[x8]"`` (8-bit codes) and
    ``"IVF<nlist>,PQ<pq_m>x4fs"`` (4-bit fast-scan codes of the vectors themselves,
    ``by_residual=False``, as faiss's ``IndexIVFPQFastScan`` has by default) or
    ``"IVF<nlist>,PQ<pq_m>x4"`` (4-bit codes of the residuals, as faiss's 4-bit ``IndexIVFPQ``;
    retro scans both with the fast-scan kernels).
    """
    spec = description.replace(" ", "")
    if spec == "Flat":
        return FlatIndex(d, metric)
    match = _IVF_PQ.match(spec)
    if match is None:
        raise ValueError(
            f"unsupported index description {description!r}: expected 'Flat' or "
            "'IVF<nlist>,PQ<pq_m>[x8|x4fs]', e.g. 'IVF1024,PQ48' or 'IVF1024,PQ96x4fs'"
        )
    nlist, pq_m, bits, fast_scan = match.groups()
    pq_bits = int(bits) if bits else 8
    if pq_bits not in (4, 8) or (fast_scan and pq_bits != 4):
        raise ValueError(
            f"{description!r}: PQ codes are 8-bit ('PQ<m>' or 'PQ<m>x8') or 4-bit fast-scan "
            "('PQ<m>x4fs')"
        )
    return IvfPqIndex(d, int(nlist), int(pq_m), pq_bits, metric, seed, by_residual=not fast_scan)
