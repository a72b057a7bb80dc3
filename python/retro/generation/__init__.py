"""Generation with live retrieval: :func:`generate` (streaming, KV-cached); CLI ``retro generate``."""

from retro.generation.generator import GenerationStats, RetrievalRecord, generate
from retro.generation.sampling import sample_next

__all__ = ["GenerationStats", "RetrievalRecord", "generate", "sample_next"]
