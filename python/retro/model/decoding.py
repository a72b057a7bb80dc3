"""What one forward call attends to (NeighbourMemory) and the state kept between incremental
decoding calls (LayerCache, DecodeCache). Shapes as in :mod:`retro.model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

_MaybeTensor = TypeVar("_MaybeTensor", torch.Tensor, "torch.Tensor | None")  # kept by repeat


@dataclass
class NeighbourMemory:
    """What the CCA layers of one forward call attend to. The visible chunks are the last complete
    chunk of earlier calls (cached, if it has neighbours), then the chunks this call completes."""

    encoded: torch.Tensor | None  # (B, L_new, K, R, D) encoded neighbours of the new chunks
    lens: torch.Tensor  # (B, L_vis, K) int32: real tokens per neighbour of each visible chunk
    q_offset: int  # position of the call's first token from the first visible chunk's start
    use_cache: bool  # the first visible chunk is the one in LayerCache.nbr_k / nbr_v
    n_new: int  # chunks this call completes (the last of them replaces the cached chunk)
    attends: torch.Tensor  # (B, T, 1) 1 where the token has a real neighbour key, else 0


@dataclass
class LayerCache:
    """One decoder layer's state between incremental decoding calls."""

    k: torch.Tensor  # (B, H, max_len, Dh) self-attention keys (rotated under rope), < pos filled
    v: torch.Tensor  # (B, H, max_len, Dh)
    nbr_k: torch.Tensor | None = None  # (B, 1, K, R, H, Dh) CCA keys of the last complete chunk
    nbr_v: torch.Tensor | None = None


@dataclass
class DecodeCache:
    """Incremental decoding state (from `model.new_cache`); each forward call advances it by T."""

    layers: list[LayerCache]
    # (B, pos % m, C): the current chunk's decoder states so far, at the first CCA layer's input
    chunk_states: torch.Tensor
    pos: int = 0  # tokens consumed so far
    # (B, 1, K) int32 neighbour lengths of the last complete chunk; None: it has no neighbours
    nbr_lens: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.layers[0].k.shape[2]

    def repeat(self, n: int) -> DecodeCache:
        """A cache of B * n sequences, each of the B repeated n times in a row (rows b*n .. b*n+n-1
        are copies of sequence b): several continuations of one decoded prefix."""
        def rep(x: _MaybeTensor) -> _MaybeTensor:
            return None if x is None else x.repeat_interleave(n, dim=0)

        layers = [LayerCache(rep(c.k), rep(c.v), rep(c.nbr_k), rep(c.nbr_v)) for c in self.layers]
        return DecodeCache(layers, rep(self.chunk_states), self.pos, rep(self.nbr_lens))


def _attends(lens: torch.Tensor, n_tokens: int, q_offset: int, chunk_size: int,
             dtype: torch.dtype) -> torch.Tensor:
    """(B, T, 1): 1 where the token at q_offset + t has a chunk in lens (B, L, K) with real keys."""
    positions = torch.arange(n_tokens, device=lens.device) + q_offset
    chunk = torch.div(positions - (chunk_size - 1), chunk_size, rounding_mode="floor")  # (T,)
    n_chunks = lens.shape[1]
    inside = (chunk >= 0) & (chunk < n_chunks)
    has_key = (lens > 0).any(-1)  # (B, L)
    return (has_key[:, chunk.clamp(0, n_chunks - 1)] & inside).unsqueeze(-1).to(dtype)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"
