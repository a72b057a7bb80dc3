"""RETRO's attention ops: chunked cross-attention (CCA) and the neighbour encoder's two attentions;
``cross_entropy``, a language model's training loss (:mod:`retro.ops.cross_entropy`); and
``ivfpq_search``, the GPU IVF-PQ search (:mod:`retro.ops.ivfpq`).

- ``chunked_cross_attention(q, k, v, nbr_lens=None, *, chunk_size=64, q_offset=0, scale=None)``
- ``neighbour_self_attention(q, k, v, nbr_lens=None, *, scale=None)``
- ``neighbour_cross_attention(q, k, v, nbr_lens=None, *, chunk_size=64, scale=None)``

They run the core's CPU kernels as ``torch.ops.retro.*`` custom ops (autograd, fake kernels,
``torch.compile``); ``*_ref`` are the pure-PyTorch definitions (:mod:`retro.ops.reference`).
"""

from retro.ops.attention import (
    chunked_cross_attention,
    neighbour_cross_attention,
    neighbour_self_attention,
)
from retro.ops.cross_entropy import cross_entropy
from retro.ops.ivfpq import ivfpq_search
from retro.ops.reference import (
    chunked_cross_attention_ref,
    neighbour_cross_attention_ref,
    neighbour_self_attention_ref,
)

__all__ = [
    "chunked_cross_attention",
    "chunked_cross_attention_ref",
    "cross_entropy",
    "ivfpq_search",
    "neighbour_cross_attention",
    "neighbour_cross_attention_ref",
    "neighbour_self_attention",
    "neighbour_self_attention_ref",
]
