"""Generation with live retrieval: :func:`generate` (streaming, KV-cached); CLI ``retro generate``."""

from typing import TYPE_CHECKING

from retro._lazy import lazy_names

if TYPE_CHECKING:
    from retro.generation.generator import GenerationStats, RetrievalRecord, generate
    from retro.generation.sampling import sample_next

# torch-backed: imported on first use, so that `retro generate --help` needs no torch
__getattr__ = lazy_names(__name__, {
    **dict.fromkeys(["GenerationStats", "RetrievalRecord", "generate"], "retro.generation.generator"),
    "sample_next": "retro.generation.sampling"})

__all__ = ["GenerationStats", "RetrievalRecord", "generate", "sample_next"]
