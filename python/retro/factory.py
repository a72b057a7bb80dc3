"""faiss-style index description strings: "IVF1024,PQ48", "IVF4096,PQ96x8", "Flat"."""

from __future__ import annotations

import re

from retro.index import FlatIndex, IvfPqIndex, Metric

_IVF_PQ = re.compile(r"^IVF(\d+),PQ(\d+)(?:x(\d+))?(fs)?$")


def index_factory(d: int, description: str, metric: Metric = "l2", seed: int = 0) -> IvfPqIndex | FlatIndex:
    """Builds an empty index from a faiss-style description.

    Supported: ``"Flat"`` (exact search) and ``"IVF<nlist>,PQ<pq_m>[x<bits>]"`` with 8-bit codes.
    """
    spec = description.replace(" ", "")
    if spec == "Flat":
        return FlatIndex(d, metric)
    match = _IVF_PQ.match(spec)
    if match is None:
        raise ValueError(
            f"unsupported index description {description!r}: expected 'Flat' or "
            "'IVF<nlist>,PQ<pq_m>[x8]', e.g. 'IVF1024,PQ48'"
        )
    nlist, pq_m, bits, fast_scan = match.groups()
    pq_bits = int(bits) if bits else 8
    if fast_scan or pq_bits != 8:
        raise ValueError(
            f"{description!r}: only 8-bit PQ codes are supported (4-bit fast-scan is not yet)"
        )
    return IvfPqIndex(d, int(nlist), int(pq_m), pq_bits, metric, seed)
