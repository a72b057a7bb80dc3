"""Rotary positions (RoPE) of RETRO's attentions: the rotation, and where each query and key sits.

A rotary op (``rope_base > 0``) rotates its queries and keys by their positions before the
attention, so that a score depends on the content and on the *relative* position of the two
tokens. Positions per op (m = chunk_size, R = neighbour length):

- CCA (chunked_cross_attention): both sides count from the start of chunk u, the chunk whose
  neighbours RET(C_u) the query attends to. The query at absolute position p >= m-1 (u = (p -
  (m-1)) // m) sits at p - u*m, in m-1 .. 2m-2; a key sits at its index in the neighbour, 0 .. R-1
  (the retrieved chunk at 0 .. m-1, its continuation at m .. 2m-1). A neighbour that is C_u followed
  by C_{u+1} (the document itself) thus holds each query's own token at relative distance 0 and the
  token it predicts at +1.
- Encoder cross-attention (neighbour_cross_attention): neighbour token j sits at j; the decoder
  state at position t of chunk l (t = l*m + i) sits at i: a neighbour token meets the decoder token
  of the same offset at distance 0.
- Encoder self-attention (neighbour_self_attention): 0 .. R-1 on both sides.
"""

from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding (rotate-half form): x (..., N, H, Dh) at positions (N,) -> same shape and
    dtype. Dh must be even; dimension i pairs with i + Dh/2 at frequency base^(-2i/Dh). Angles are
    computed in at least float32 (also for bfloat16 x); negative positions rotate back."""
    dh = x.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = base ** -(torch.arange(0, dh, 2, device=x.device, dtype=dtype) / dh)  # (Dh/2,)
    angles = positions.to(device=x.device, dtype=dtype)[:, None] * inv_freq  # (N, Dh/2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]  # (N, 1, Dh/2): every head
    x1, x2 = x.to(dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


_CORE_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}


def apply_rope_kernel(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """apply_rope without autograd: on the CPU in one pass of the core's kernel (retro/rotary.h;
    PyTorch's elementwise ops read and write x ~8 times), elsewhere apply_rope. For the attention
    ops, whose own backward rotates the gradients back."""
    if x.device.type != "cpu" or x.dtype not in _CORE_DTYPES:
        return apply_rope(x, positions, base)
    from retro import _core

    x = x.contiguous()
    out = torch.empty_like(x)
    n, heads, dh = x.shape[-3:]
    positions = positions.to(torch.int64).contiguous()
    _core.rotate_positions(_CORE_DTYPES[x.dtype], x.numel() // max(1, n * heads * dh), n, heads,
                           dh, float(base), positions.data_ptr(), x.data_ptr(), out.data_ptr())
    return out


def cca_query_positions(n_tokens: int, q_offset: int, chunk_size: int,
                        device: torch.device) -> torch.Tensor:
    """(T,) int64: position p - u*m of the query at absolute position p = q_offset + t."""
    p = torch.arange(n_tokens, device=device) + q_offset
    u = torch.div(p - (chunk_size - 1), chunk_size, rounding_mode="floor")
    return p - u * chunk_size


def positions(op: str, q: torch.Tensor, k: torch.Tensor, chunk_size: int,
              q_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (Nq,), (Nk,) along dim -3 of q and k of op "chunked_cross",
    "neighbour_cross" or "neighbour_self" (see the module docstring)."""
    arange = lambda n: torch.arange(n, device=q.device)  # noqa: E731
    if op == "chunked_cross":  # q (B, T, H, Dh), k (B, L, K, R, H, Dh)
        return cca_query_positions(q.shape[1], q_offset, chunk_size, q.device), arange(k.shape[3])
    if op == "neighbour_cross":  # q (B, L, K, R, H, Dh), k (B, T, H, Dh)
        return arange(q.shape[3]), arange(k.shape[1]) % chunk_size
    if op == "neighbour_self":  # q, k (B, L, K, R, H, Dh)
        return arange(q.shape[3]), arange(k.shape[3])
    raise ValueError(f"unknown attention op {op!r}")


def rotate(op: str, q: torch.Tensor, k: torch.Tensor, chunk_size: int, q_offset: int,
           base: float, inverse: bool = False,
           kernel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k of op rotated by their positions (inverse: rotated back, the adjoint that carries
    gradients of rotated q, k to q, k); base <= 0: unchanged. kernel: through apply_rope_kernel
    (no autograd), else apply_rope."""
    if base <= 0:
        return q, k
    q_pos, k_pos = positions(op, q, k, chunk_size, q_offset)
    sign = -1 if inverse else 1
    rope = apply_rope_kernel if kernel else apply_rope
    return rope(q, sign * q_pos, base), rope(k, sign * k_pos, base)
