"""Helpers shared by the test modules: seeded data, recall, and a numpy reader of the index file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retro import _core

# The shared dataset and index of conftest.py: IVF64,PQ8 over 5000 x 32 clustered points.
D, NLIST, PQ_M = 32, 64, 8
N_BASE, N_QUERIES, K = 5000, 200, 10

SIMD_ORDER = ["scalar", "avx2", "avx512"]
# Every kernel set this CPU can run, e.g. ["scalar", "avx2", "avx512"].
SIMD_LEVELS = SIMD_ORDER[: SIMD_ORDER.index(_core.best_simd_level()) + 1]
BF16_ORDER = ["none", "avx512bf16", "amx"]
# Every bf16 product kernel this CPU can run, e.g. ["none", "avx512bf16", "amx"].
BF16_KERNELS = BF16_ORDER[: BF16_ORDER.index(_core.best_bf16_kernel()) + 1]


def clustered(
    n: int, d: int, n_centres: int = 256, spread: float = 0.5, seed: int = 0
) -> np.ndarray:
    """(n, d) float32: a uniformly drawn N(0, 1) centre plus N(0, spread^2) noise per point."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, d))
    labels = rng.integers(0, n_centres, n)
    return (centres[labels] + spread * rng.standard_normal((n, d))).astype(np.float32)


def torchrun(args: list[str], ranks: int, timeout_s: float,
             env: dict[str, str] | None = None) -> tuple[int, str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node=ranks -m retro *args``: the
    exit status and the output (stdout and stderr). --standalone rendezvous on a free port; a run
    past timeout_s (a rank stuck in a collective) is killed with its process group."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}", "-m", "retro", *args]
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"torchrun timed out after {timeout_s} s:\n{output[-4000:]}")
    return process.returncode, output


def recall_at(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the true k nearest neighbours (n, k) found among labels (n, k')."""
    found = sum(len(set(row) & set(true_row)) for row, true_row in zip(labels, truth))
    return found / truth.size


def exact_distances(metric: str, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(nq, n) float64 squared L2 distances or inner products."""
    q, v = queries.astype(np.float64), vectors.astype(np.float64)
    if metric == "ip":
        return q @ v.T
    # the expansion loses ~1e-16 relative to the norms in float64: far below float32's rounding
    return (q * q).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2.0 * (q @ v.T)


# --- the file format of cpp/src/index_file.h ----------------------------------------------------

NUM_SECTIONS = 6
SECTION_NAMES = ["coarse centroids", "PQ centroids", "list sizes", "codes", "ids", "terms"]
HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("index_type", "<u4"),
        ("metric", "<u4"),
        ("pq_bits", "<u4"),
        ("d", "<u8"),
        ("nlist", "<u8"),
        ("pq_m", "<u8"),
        ("ntotal", "<u8"),
        ("seed", "<u8"),
        ("is_trained", "<u4"),
        ("num_sections", "<u4"),
        ("coarse_objective", "<f8"),
        ("sections", [("offset", "<u8"), ("bytes", "<u8"), ("checksum", "<u8")], (NUM_SECTIONS,)),
        ("header_checksum", "<u8"),
    ]
)
assert HEADER_DTYPE.itemsize == 232  # sizeof(FileHeader): no padding between the fields
VERSION_OFFSET = HEADER_DTYPE.fields["version"][1]
BLOCK = 64  # vectors per code block (IvfPqIndex::kBlock)


@dataclass
class IndexFile:
    """An index file decoded with numpy: the header and each vector's reconstruction."""

    header: np.void
    raw: bytes
    coarse_centroids: np.ndarray  # (nlist, d)
    pq_centroids: np.ndarray  # (pq_m, 256, dsub)
    list_sizes: np.ndarray  # (nlist,)
    ids: np.ndarray  # (ntotal,) in file order
    list_of: np.ndarray  # (ntotal,) list of each vector, file order
    codes: np.ndarray  # (ntotal, pq_m) uint8, file order

    def section(self, s: int) -> tuple[int, int]:
        """(offset, bytes) of section s."""
        sec = self.header["sections"][s]
        return int(sec["offset"]), int(sec["bytes"])

    def reconstructions(self) -> np.ndarray:
        """(ntotal, d) float64: coarse centroid plus the decoded PQ residual, file order."""
        pq_m = self.codes.shape[1]
        residuals = np.concatenate(
            [self.pq_centroids[m, self.codes[:, m]] for m in range(pq_m)], axis=1
        )
        return self.coarse_centroids[self.list_of].astype(np.float64) + residuals


def read_index_file(path: Path) -> IndexFile:
    raw = Path(path).read_bytes()
    header = np.frombuffer(raw, HEADER_DTYPE, count=1)[0]
    d, nlist, pq_m = int(header["d"]), int(header["nlist"]), int(header["pq_m"])

    def array(s: int, dtype: str) -> np.ndarray:
        sec = header["sections"][s]
        return np.frombuffer(raw, dtype, count=int(sec["bytes"]) // np.dtype(dtype).itemsize,
                             offset=int(sec["offset"]))

    sizes = array(2, "<i8")
    blocked = array(3, "u1")
    codes, list_of, pos = [], [], 0
    for list_no, size in enumerate(sizes):
        nblocks = -(-int(size) // BLOCK)
        # codes[(block * pq_m + m) * BLOCK + lane] -> (block, m, lane) -> (vector, m)
        list_codes = blocked[pos : pos + nblocks * pq_m * BLOCK].reshape(nblocks, pq_m, BLOCK)
        codes.append(list_codes.transpose(0, 2, 1).reshape(-1, pq_m)[:size])
        list_of.append(np.full(size, list_no))
        pos += nblocks * pq_m * BLOCK
    return IndexFile(
        header=header,
        raw=raw,
        coarse_centroids=array(0, "<f4").reshape(nlist, d),
        pq_centroids=array(1, "<f4").reshape(pq_m, 256, d // pq_m),
        list_sizes=sizes,
        ids=array(4, "<i8"),
        list_of=np.concatenate(list_of),
        codes=np.concatenate(codes),
    )
