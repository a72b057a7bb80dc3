"""faiss-style index description strings: "IVF1024,PQ48", "IVF4096,PQ96x8", "IVF1024,PQ96x4fs",
"OPQ32_256,IVF1024,PQ32", "Flat"."""

from __future__ import annotations

import re

from retro.errors import RetroError
from retro.index.flat import FlatIndex, Metric
from retro.index.ivf_pq import IvfPqIndex

_IVF_PQ = re.compile(r"^(?:OPQ(\d+)(?:_(\d+))?,)?IVF(\d+),PQ(\d+)(?:x(\d+))?(fs)?$")


def index_factory(d: int, description: str, metric: Metric = "l2", seed: int = 0) -> IvfPqIndex | FlatIndex:
    """Builds an empty index from a faiss-style description.

    Supported: ``"Flat"`` (exact search), ``"IVF<nlist>,PQ<pq_m>[x8]"`` (8-bit codes) and
    ``"IVF<nlist>,PQ<pq_m>x4fs"`` (4-bit fast-scan codes of the vectors themselves,
    ``by_residual=False``, as faiss's ``IndexIVFPQFastScan`` has by default) or
    ``"IVF<nlist>,PQ<pq_m>x4"`` (4-bit codes of the residuals, as faiss's 4-bit ``IndexIVFPQ``;
    retro scans both with the fast-scan kernels). Any of them may start with faiss's OPQ
    pre-transform ``"OPQ<opq_m>[_<opq_d>],"``: a rotation to opq_d dimensions (default d, at most
    d; opq_m and pq_m must divide it) trained for a PQ of opq_m sub-quantizers, e.g.
    ``"OPQ32_256,IVF1024,PQ32"`` or ``"OPQ48,IVF1024,PQ96x4fs"``.
    """
    spec = description.replace(" ", "")
    if spec == "Flat":
        return FlatIndex(d, metric)
    match = _IVF_PQ.match(spec)
    if match is None:
        raise RetroError(
            f"unsupported index description {description!r}: expected 'Flat' or "
            "'[OPQ<opq_m>[_<opq_d>],]IVF<nlist>,PQ<pq_m>[x8|x4fs]', e.g. 'IVF1024,PQ48', "
            "'IVF1024,PQ96x4fs' or 'OPQ32_256,IVF1024,PQ32'"
        )
    opq_m, opq_d, nlist, pq_m, bits, fast_scan = match.groups()
    pq_bits = int(bits) if bits else 8
    if pq_bits not in (4, 8) or (fast_scan and pq_bits != 4):
        raise RetroError(
            f"{description!r}: PQ codes are 8-bit ('PQ<m>' or 'PQ<m>x8') or 4-bit fast-scan "
            "('PQ<m>x4fs')"
        )
    if opq_m is not None and int(opq_m) == 0:
        raise RetroError(f"{description!r}: OPQ needs at least one sub-quantizer, got 'OPQ0'")
    try:
        return IvfPqIndex(
            d, int(nlist), int(pq_m), pq_bits, metric, seed, by_residual=not fast_scan,
            opq_m=int(opq_m or 0), opq_d=None if opq_d is None else int(opq_d),
        )
    except ValueError as e:
        raise RetroError(f"{description!r} for d={d}: {e}") from e
