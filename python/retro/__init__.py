"""retro: retrieval-enhanced language models (RETRO) with a compiled core.

- The retrieval index: :class:`IvfPqIndex` (IVF-PQ, faiss-compatible parameters), :class:`FlatIndex`
  (exact search) and :func:`index_factory` for faiss-style strings (numpy only).
- faiss interop: :func:`to_faiss` / :func:`from_faiss` (an ``IndexIVFPQ`` with a flat quantizer).
- The retrieval database: :func:`build_db`, :func:`open_db` (:mod:`retro.db`, CLI ``retro db``).
- Training, evaluation, generation (need torch; ``retro train|eval|generate|demo``):
  :class:`TrainConfig` with :func:`retro.train.train`, :func:`evaluate`, :func:`generate`.
- The model (needs torch, imported on first use): :class:`RetroConfig`, :class:`Retro`,
  :class:`GPT`, :func:`from_gpt`; the attention ops in :mod:`retro.ops`.
"""

from typing import TYPE_CHECKING

from retro import _core
from retro._lazy import lazy_names
from retro.db import build_db, open_db
from retro.index import FlatIndex, IvfPqIndex, from_faiss, index_factory, to_faiss

if TYPE_CHECKING:
    from retro.eval import evaluate
    from retro.generation import generate
    from retro.model import GPT, Retro, RetroConfig, from_gpt
    from retro.train import TrainConfig

__version__: str = _core.__version__

# torch-backed names, imported on first use so that the index needs no torch
__getattr__ = lazy_names(__name__, {
    **dict.fromkeys(["GPT", "Retro", "RetroConfig", "from_gpt"], "retro.model"),
    "generate": "retro.generation",
    "evaluate": "retro.eval",
    "TrainConfig": "retro.train",
})

__all__ = [
    "FlatIndex",
    "GPT",
    "IvfPqIndex",
    "Retro",
    "RetroConfig",
    "TrainConfig",
    "build_db",
    "evaluate",
    "from_faiss",
    "from_gpt",
    "generate",
    "cuda_available",
    "get_num_threads",
    "has_cuda",
    "index_factory",
    "open_db",
    "set_num_threads",
    "bf16_kernel",
    "set_bf16_kernel",
    "set_simd_level",
    "simd_level",
    "to_faiss",
]


def has_cuda() -> bool:
    """True if this build contains the CUDA kernels (it may still run on a machine without a GPU)."""
    return bool(_core.has_cuda())


def cuda_available() -> bool:
    """True if this build has CUDA kernels and a usable GPU is present now."""
    return has_cuda() and _core.cuda_device_count() > 0


def simd_level() -> str:
    """The CPU kernels in use: "scalar", "avx2" or "avx512" (set RETRO_SIMD to force one)."""
    return _core.simd_level()


def set_simd_level(level: str) -> None:
    """Forces "scalar", "avx2" or "avx512" kernels; raises ValueError if the CPU lacks them."""
    _core.set_simd_level(level)


def bf16_kernel() -> str:
    """The kernel of the bfloat16 attention products: "none", "avx512bf16" or "amx" (RETRO_BF16)."""
    return _core.bf16_kernel()


def set_bf16_kernel(kernel: str) -> None:
    """Forces "none", "avx512bf16" or "amx"; raises ValueError if the CPU (or OS) lacks it."""
    _core.set_bf16_kernel(kernel)


def get_num_threads() -> int:
    """OpenMP threads used by train/add/search."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the OpenMP threads used by train/add/search (results do not depend on it)."""
    _core.set_num_threads(n)
