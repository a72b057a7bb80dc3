"""Types of retro's compiled core (cpp/bindings/). Arrays are coerced to C-contiguous arrays of the
dtype named; ``int`` addresses are device or host pointers (``tensor.data_ptr()``).

The names under "CUDA build only" exist when ``has_cuda()`` is True. tests/test_core_stub.py checks
that this file and the module name the same things.
"""

from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

__version__: str

_scan_block: int
_fast_scan_block: int

def has_cuda() -> bool: ...
def cuda_device_count() -> int: ...
def simd_level() -> str: ...
def best_simd_level() -> str: ...
def set_simd_level(level: str) -> None: ...
def bf16_kernel() -> str: ...
def best_bf16_kernel() -> str: ...
def set_bf16_kernel(kernel: str) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def xxh64(data: bytes, /) -> int: ...

# kernel entry points for tests: one SIMD level's kernel on given inputs
def _pq_scan8(
    level: str,
    codes: npt.ArrayLike,
    lut: npt.ArrayLike,
    bias: float,
    terms: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float32]: ...
def _pq_filter8(
    level: str,
    codes: npt.ArrayLike,
    lut: npt.ArrayLike,
    n: int,
    bias: float,
    terms: npt.ArrayLike | None,
    threshold: float,
) -> npt.NDArray[np.int64]: ...
def _pq_scan4(
    level: str, codes: npt.ArrayLike, qlut: npt.ArrayLike, n: int, limit: int
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]: ...
def _gemm(level: str, a: npt.ArrayLike, b: npt.ArrayLike, /) -> npt.NDArray[np.float32]: ...

class FlatIndex:
    def __init__(self, d: int, metric: str = "l2") -> None: ...
    @property
    def d(self) -> int: ...
    @property
    def ntotal(self) -> int: ...
    @property
    def metric(self) -> str: ...
    def add(self, x: npt.ArrayLike, ids: npt.ArrayLike | None = None) -> None: ...
    def search(
        self, x: npt.ArrayLike, k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    def reset(self) -> None: ...

class IvfPqIndex:
    def __init__(
        self,
        d: int,
        nlist: int,
        pq_m: int,
        pq_bits: int = 8,
        metric: str = "l2",
        seed: int = 0,
        by_residual: bool = True,
        opq_m: int = 0,
        opq_d: int = 0,
    ) -> None: ...
    @property
    def d(self) -> int: ...
    @property
    def ivf_d(self) -> int: ...
    @property
    def opq_m(self) -> int: ...
    def rotation(self) -> npt.NDArray[np.float32] | None: ...
    def set_rotation(self, rotation: npt.ArrayLike) -> None: ...
    def rotate(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
    @property
    def nlist(self) -> int: ...
    @property
    def pq_m(self) -> int: ...
    @property
    def pq_bits(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def by_residual(self) -> bool: ...
    @property
    def ntotal(self) -> int: ...
    @property
    def is_trained(self) -> bool: ...
    @property
    def is_mmapped(self) -> bool: ...
    @property
    def coarse_objective(self) -> float: ...
    niter: int
    max_points_per_centroid: int
    def list_sizes(self) -> npt.NDArray[np.int64]: ...
    def coarse_centroids(self) -> npt.NDArray[np.float32]: ...
    def pq_centroids(self) -> npt.NDArray[np.float32]: ...
    def list_codes(self, list: SupportsIndex) -> npt.NDArray[np.uint8]: ...
    def list_ids(self, list: SupportsIndex) -> npt.NDArray[np.int64]: ...
    def set_trained(self, coarse_centroids: npt.ArrayLike, pq_centroids: npt.ArrayLike) -> None: ...
    def add_encoded(self, list: int, codes: npt.ArrayLike, ids: npt.ArrayLike) -> None: ...
    def add_preassigned(
        self, list_of: npt.ArrayLike, codes: npt.ArrayLike, ids: npt.ArrayLike | None = None
    ) -> None: ...
    def concatenated_lists(self) -> dict[str, npt.NDArray[Any]]: ...
    def train(self, x: npt.ArrayLike) -> None: ...
    def add(self, x: npt.ArrayLike, ids: npt.ArrayLike | None = None) -> None: ...
    def search(
        self,
        x: npt.ArrayLike,
        k: int,
        nprobe: int = 8,
        rerank: npt.ArrayLike | None = None,
        k_factor: int = 4,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    def rerank_candidates(
        self, x: npt.ArrayLike, candidates: npt.ArrayLike, k: int, rerank: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
    def reset(self) -> None: ...
    def save(self, path: str) -> None: ...
    @staticmethod
    def load(path: str, mmap: bool, verify: bool) -> IvfPqIndex: ...

class AttentionParams:
    def __init__(
        self,
        op: str,
        dtype: str,
        batch: int,
        tokens: int,
        heads: int,
        head_dim: int,
        chunks: int,
        neighbours: int,
        neighbour_len: int,
        chunk_size: int,
        q_offset: int,
        scale: float,
        nbr_lens: int,
    ) -> None: ...
    @property
    def query_rows(self) -> int: ...
    @property
    def key_rows(self) -> int: ...

def attention_forward(
    params: AttentionParams, q: int, k: int, v: int, out: int, lse: int
) -> None: ...
def attention_backward(
    params: AttentionParams,
    q: int,
    k: int,
    v: int,
    out: int,
    lse: int,
    grad_out: int,
    grad_q: int,
    grad_k: int,
    grad_v: int,
) -> None: ...

# ---- CUDA build only --------------------------------------------------------------------------
CUDA_ATTENTION_MAX_KEY_SLOTS: int
CUDA_IVFPQ_MAX_K: int
CUDA_IVFPQ_MAX_NPROBE: int

def cuda_device_name(device: int = 0) -> str: ...
def cutlass_version() -> str: ...
def cuda_set_fused_backward(enabled: bool) -> None: ...
def cuda_attention_unsupported(params: AttentionParams) -> str: ...
def rotate_positions(
    dtype: str,
    outer: int,
    positions: int,
    heads: int,
    head_dim: int,
    base: float,
    position: int,
    x: int,
    out: int,
) -> None: ...
def cross_entropy_forward(
    dtype: str, rows: int, vocab: int, ignore_index: int, logits: int, targets: int, lse: int,
    loss: int
) -> None: ...
def cross_entropy_backward(
    dtype: str,
    rows: int,
    vocab: int,
    ignore_index: int,
    logits: int,
    targets: int,
    lse: int,
    grad_loss: int,
    grad: int,
) -> None: ...
def cuda_attention_forward(
    params: AttentionParams,
    q: int,
    k: int,
    v: int,
    out: int,
    lse: int,
    device: int,
    stream: int,
) -> None: ...
def cuda_attention_backward(
    params: AttentionParams,
    q: int,
    k: int,
    v: int,
    out: int,
    lse: int,
    grad_out: int,
    grad_q: int,
    grad_k: int,
    grad_v: int,
    delta: int,
    device: int,
    stream: int,
) -> None: ...

class IvfPqDeviceIndex:
    def __init__(
        self,
        d: int,
        pq_m: int,
        nlist: int,
        metric: str,
        coarse_centroids: int,
        coarse_norms: int,
        pq_centroids_t: int,
        codes: int,
        offsets: int,
        sizes: int,
        ids: int,
        terms: int,
        max_list_size: int,
    ) -> None: ...

def cuda_ivfpq_search_unsupported(
    index: IvfPqDeviceIndex, nprobe: int, k: int, fp16_lut: bool, device: int
) -> str: ...
def cuda_ivfpq_search_workspace(
    index: IvfPqDeviceIndex, n: int, nprobe: int, k: int, fp16_lut: bool, device: int
) -> int: ...
def cuda_ivfpq_search(
    index: IvfPqDeviceIndex,
    n: int,
    x: int,
    nprobe: int,
    k: int,
    fp16_lut: bool,
    distances: int,
    labels: int,
    workspace: int,
    workspace_bytes: int,
    device: int,
    stream: int,
) -> None: ...
def cuda_ivfpq_encode_workspace(index: IvfPqDeviceIndex, n: int, device: int) -> int: ...
def cuda_ivfpq_encode(
    index: IvfPqDeviceIndex,
    n: int,
    x: int,
    list_of: int,
    codes: int,
    workspace: int,
    workspace_bytes: int,
    device: int,
    stream: int,
) -> None: ...
def cuda_nearest_centroids_workspace(n: int, k: int) -> int: ...
def cuda_nearest_centroids(
    metric: str,
    n: int,
    d: int,
    x: int,
    k: int,
    centroids: int,
    norms: int,
    labels: int,
    distances: int,
    workspace: int,
    workspace_bytes: int,
    device: int,
    stream: int,
) -> None: ...
