"""Writes the version 2 (8-bit) and version 3 (4-bit fast-scan) index files of tests/data with the
code of main before OPQ (main 3a67f8a):

    PYTHONPATH=/work/main/python python tests/data/make_legacy_files.py tests/data

tests/test_opq.py checks that later builds load them, search them as a freshly built index, and
write them back byte for byte.
"""

import sys

import numpy as np

import retro

# file name -> IvfPqIndex arguments after d=12, nlist=4
LEGACY_FILES = {
    "v2_ivf4_pq3.ivfpq": dict(pq_m=3),
    "v3_ivf4_pq6x4fs.ivfpq": dict(pq_m=6, pq_bits=4, by_residual=False),
}


def legacy_index(**kwargs) -> retro.IvfPqIndex:
    """The index each file holds: trained on 300 seeded points, 77 of them added with ids 5i + 1."""
    x = np.random.default_rng(7).standard_normal((300, 12)).astype(np.float32)
    index = retro.IvfPqIndex(12, 4, seed=3, **kwargs)
    index.niter = 4
    index.train(x)
    index.add(x[:77], np.arange(77, dtype=np.int64) * 5 + 1)
    return index


if __name__ == "__main__":
    for name, kwargs in LEGACY_FILES.items():
        legacy_index(**kwargs).save(f"{sys.argv[1]}/{name}")
