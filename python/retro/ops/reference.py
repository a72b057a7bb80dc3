"""Pure-PyTorch references of the RETRO attention ops: the definitions the core's kernels are tested
against (float64 or any dtype; every output element written; no in-place tricks).

Shapes (B batch, T decoder tokens, H heads, Dh head width, L chunks, K neighbours per chunk, R
tokens per neighbour, m = chunk_size):

- chunked_cross_attention_ref(q (B,T,H,Dh), k, v (B,L,K,R,H,Dh), nbr_lens (B,L,K) | None)
  -> (B,T,H,Dh). The token at absolute position p = q_offset + t, p >= m-1, attends to the real
  keys (index < nbr_lens) of all K neighbours of chunk u = (p - (m-1)) // m, if u < L; every other
  token, and tokens whose chunk has no real key, get zeros.
- neighbour_self_attention_ref(q, k, v (B,L,K,R,H,Dh), nbr_lens (B,L,K) | None) -> (B,L,K,R,H,Dh).
  Bidirectional within one neighbour: token r < len attends to the tokens < len of the same
  neighbour; tokens r >= len get zeros.
- neighbour_cross_attention_ref(q (B,L,K,R,H,Dh), k, v (B,T,H,Dh), nbr_lens (B,L,K) | None)
  -> (B,L,K,R,H,Dh). Neighbour token r < len of chunk l attends to the decoder states of chunk l,
  positions [l*m, min((l+1)*m, T)); tokens r >= len, and chunks with no decoder position, get zeros.

Each takes ``rope_base``: > 0 rotates queries and keys by their positions first
(:mod:`retro.ops.rotary`, in float32 or wider), 0 leaves them as they are.
"""

from __future__ import annotations

import math

import torch

from retro.ops import rotary


def _scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                      upcast: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v over the last two dims; rows with no allowed key -> 0.

    q (..., Nq, Dh), k/v (..., Nk, Dh), mask (..., Nq, Nk) bool (True = may attend). upcast: compute
    16-bit inputs in float32 (False: in their own dtype, the low-precision baseline of the tests).
    """
    wide = (lambda x: x.float() if x.dtype in (torch.float16, torch.bfloat16) else x) if upcast else (lambda x: x)
    scores = torch.matmul(wide(q), wide(k).transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    any_key = mask.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~any_key, 0.0), dim=-1) * any_key
    out = torch.matmul(probs, wide(v))
    return out.to(q.dtype)


def _rotated(op: str, q: torch.Tensor, k: torch.Tensor, chunk_size: int, q_offset: int,
             rope_base: float, upcast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k rotated by their positions in op (rope_base > 0), in float32 when upcast widens."""
    if rope_base <= 0:
        return q, k
    if upcast:
        q, k = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x for x in (q, k))
    return rotary.rotate(op, q, k, chunk_size, q_offset, rope_base)


def _lengths(nbr_lens: torch.Tensor | None, shape: tuple[int, ...], r: int, device: torch.device) -> torch.Tensor:
    if nbr_lens is None:
        return torch.full(shape, r, dtype=torch.int32, device=device)
    return nbr_lens


def chunked_cross_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    nbr_lens: torch.Tensor | None = None,
    *,
    chunk_size: int = 64,
    q_offset: int = 0,
    scale: float | None = None,
    upcast: bool = True,
    rope_base: float = 0.0,
) -> torch.Tensor:
    """Chunked cross-attention (RETRO's CCA) by dense masking. See the module docstring."""
    dtype = q.dtype
    q, k = _rotated("chunked_cross", q, k, chunk_size, q_offset, rope_base, upcast)
    b, t, h, dh = q.shape
    _, n_chunks, n_nbrs, r, _, _ = k.shape
    if n_chunks == 0:  # no chunk is complete yet: nothing to attend to
        return torch.zeros_like(q, dtype=dtype)
    lens = _lengths(nbr_lens, (b, n_chunks, n_nbrs), r, q.device)
    positions = torch.arange(t, device=q.device) + q_offset
    chunk = torch.div(positions - (chunk_size - 1), chunk_size, rounding_mode="floor")  # (T,)
    valid = (positions >= chunk_size - 1) & (chunk < n_chunks)
    chunk = chunk.clamp(0, n_chunks - 1)
    # keys of every chunk flattened: (B, L, K*R, H, Dh) -> per token the keys of its chunk
    keys = k.reshape(b, n_chunks, n_nbrs * r, h, dh)[:, chunk]  # (B, T, K*R, H, Dh)
    values = v.reshape(b, n_chunks, n_nbrs * r, h, dh)[:, chunk]
    real = torch.arange(r, device=q.device).view(1, 1, 1, r) < lens.unsqueeze(-1)  # (B, L, K, R)
    real = real.reshape(b, n_chunks, n_nbrs * r)[:, chunk] & valid.view(1, t, 1)  # (B, T, K*R)
    out = _masked_attention(
        q.permute(0, 1, 2, 3).unsqueeze(3),  # (B, T, H, 1, Dh)
        keys.permute(0, 1, 3, 2, 4),  # (B, T, H, K*R, Dh)
        values.permute(0, 1, 3, 2, 4),
        real.unsqueeze(2).unsqueeze(3),  # (B, T, 1, 1, K*R)
        _scale(scale, dh),
        upcast,
    )
    return out.squeeze(3).to(dtype)


def neighbour_self_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    nbr_lens: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    upcast: bool = True,
    rope_base: float = 0.0,
) -> torch.Tensor:
    """Bidirectional attention inside each neighbour, limited to its real tokens."""
    dtype = q.dtype
    q, k = _rotated("neighbour_self", q, k, 0, 0, rope_base, upcast)
    b, n_chunks, n_nbrs, r, h, dh = q.shape
    lens = _lengths(nbr_lens, (b, n_chunks, n_nbrs), r, q.device)
    real = torch.arange(r, device=q.device).view(1, 1, 1, r) < lens.unsqueeze(-1)  # (B, L, K, R)
    mask = real.unsqueeze(-1) & real.unsqueeze(-2)  # (B, L, K, Rq, Rk)
    out = _masked_attention(
        q.permute(0, 1, 2, 4, 3, 5), k.permute(0, 1, 2, 4, 3, 5), v.permute(0, 1, 2, 4, 3, 5),
        mask.unsqueeze(3), _scale(scale, dh), upcast,
    )  # (B, L, K, H, R, Dh)
    return out.permute(0, 1, 2, 4, 3, 5).to(dtype)


def neighbour_cross_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    nbr_lens: torch.Tensor | None = None,
    *,
    chunk_size: int = 64,
    scale: float | None = None,
    upcast: bool = True,
    rope_base: float = 0.0,
) -> torch.Tensor:
    """Neighbour tokens attending to the decoder states of the chunk they were retrieved for."""
    dtype = q.dtype
    q, k = _rotated("neighbour_cross", q, k, chunk_size, 0, rope_base, upcast)
    b, n_chunks, n_nbrs, r, h, dh = q.shape
    t = k.shape[1]
    lens = _lengths(nbr_lens, (b, n_chunks, n_nbrs), r, q.device)
    padded = n_chunks * chunk_size
    if t < padded:  # chunks past the end of the sequence have fewer (or no) positions
        pad = (0, 0, 0, 0, 0, padded - t)
        k, v = torch.nn.functional.pad(k, pad), torch.nn.functional.pad(v, pad)
    k = k[:, :padded].reshape(b, n_chunks, chunk_size, h, dh)
    v = v[:, :padded].reshape(b, n_chunks, chunk_size, h, dh)
    exists = (torch.arange(padded, device=q.device) < t).view(n_chunks, chunk_size)  # (L, m)
    real = torch.arange(r, device=q.device).view(1, 1, 1, r) < lens.unsqueeze(-1)  # (B, L, K, R)
    mask = real.unsqueeze(-1) & exists.view(1, n_chunks, 1, 1, chunk_size)  # (B, L, K, R, m)
    out = _masked_attention(
        q.permute(0, 1, 2, 4, 3, 5),  # (B, L, K, H, R, Dh)
        k.permute(0, 1, 3, 2, 4).unsqueeze(2),  # (B, L, 1, H, m, Dh)
        v.permute(0, 1, 3, 2, 4).unsqueeze(2),
        mask.unsqueeze(3),  # (B, L, K, 1, R, m)
        _scale(scale, dh),
        upcast,
    )
    return out.permute(0, 1, 2, 4, 3, 5).to(dtype)


def attention_ref(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  nbr_lens: torch.Tensor | None, *, chunk_size: int, q_offset: int,
                  scale: float | None, rope_base: float) -> torch.Tensor:
    """The reference of op "chunked_cross", "neighbour_self" or "neighbour_cross"."""
    if op == "chunked_cross":
        return chunked_cross_attention_ref(q, k, v, nbr_lens, chunk_size=chunk_size,
                                           q_offset=q_offset, scale=scale, rope_base=rope_base)
    if op == "neighbour_self":
        return neighbour_self_attention_ref(q, k, v, nbr_lens, scale=scale, rope_base=rope_base)
    return neighbour_cross_attention_ref(q, k, v, nbr_lens, chunk_size=chunk_size, scale=scale,
                                         rope_base=rope_base)
