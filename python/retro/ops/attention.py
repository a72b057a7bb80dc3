"""RETRO's attentions as torch ops backed by the core's kernels (cpp/include/retro/attention.h on
the CPU, cuda/attention.cu on the GPU).

Each op is registered as ``torch.ops.retro.<name>`` (forward, returning the output and the
log-sum-exp of each query row) and ``torch.ops.retro.<name>_backward``, with fake (meta) kernels
for ``torch.compile`` and autograd through the core's backward kernel. One forward and one
backward per op serve both devices. On the CPU: float32, bfloat16 (float32 accumulation; AMX tile
products where the CPU has them, see ``retro.bf16_kernel()``) and float64. On CUDA (a build with
nvcc): bfloat16 and float16 with head_dim 64 or 128 and at most ``CUDA_MAX_KEY_SLOTS`` keys per
group run the fused kernels; other CUDA calls take the PyTorch reference.

``rope_base > 0`` makes an op rotary: queries and keys are rotated by their positions
(:mod:`retro.ops.rotary`) on the way into the kernel, and the kernel's query and key gradients
rotated back, so that the kernels themselves stay position-free. Shapes and semantics:
:mod:`retro.ops.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retro import _core
from retro.ops import reference, rotary
from retro.ops.reference import _scale

_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
           torch.float16: "float16"}
_CUDA_DTYPES = (torch.bfloat16, torch.float16)
_CUDA_HEAD_DIMS = (64, 128)
# 0: no CUDA kernels built
CUDA_MAX_KEY_SLOTS: int = getattr(_core, "CUDA_ATTENTION_MAX_KEY_SLOTS", 0)


@dataclass(frozen=True)
class _Op:
    """One attention: its core name, the ranks of q and k, and its reference."""

    name: str  # torch.ops.retro.<name>
    core: str  # the op name in retro._core.AttentionParams
    q_rank: int
    k_rank: int

    def sizes(self, q: torch.Tensor, k: torch.Tensor) -> dict[str, int]:
        """batch, tokens, heads, head_dim, chunks, neighbours, neighbour_len of a call."""
        nbr = q if self.q_rank == 6 else k  # the (B, L, K, R, H, Dh) side
        tokens = q.shape[1] if self.q_rank == 4 else (k.shape[1] if self.k_rank == 4 else 0)
        b, n_chunks, n_nbrs, r, h, dh = nbr.shape
        return dict(batch=b, tokens=tokens, heads=h, head_dim=dh, chunks=n_chunks,
                    neighbours=n_nbrs, neighbour_len=r)

    def key_slots(self, q: torch.Tensor, k: torch.Tensor, chunk_size: int) -> int:
        """Keys of the widest group: K R for CCA, R for the encoder's self-attention, m for its
        cross-attention."""
        if self.k_rank == 4:
            return chunk_size
        return k.shape[2] * k.shape[3] if self.q_rank == 4 else k.shape[3]

    def runs_core(self, q: torch.Tensor, k: torch.Tensor, chunk_size: int) -> bool:
        """True when the call runs the core: always on the CPU; on CUDA when the fused kernels
        take it (a static decision: compile-friendly)."""
        if q.device.type == "cpu":
            return True
        return (q.device.type == "cuda" and CUDA_MAX_KEY_SLOTS > 0 and q.dtype in _CUDA_DTYPES
                and q.shape[-1] in _CUDA_HEAD_DIMS
                and self.key_slots(q, k, chunk_size) <= CUDA_MAX_KEY_SLOTS)


CHUNKED_CROSS = _Op("chunked_cross_attention", "chunked_cross", 4, 6)
NEIGHBOUR_SELF = _Op("neighbour_self_attention", "neighbour_self", 6, 6)
NEIGHBOUR_CROSS = _Op("neighbour_cross_attention", "neighbour_cross", 6, 4)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _params(op: _Op, q, k, nbr_lens, chunk_size: int, q_offset: int, scale: float):
    return _core.AttentionParams(
        op.core, _DTYPES[q.dtype], **op.sizes(q, k), chunk_size=chunk_size, q_offset=q_offset,
        scale=scale, nbr_lens=0 if nbr_lens is None else nbr_lens.data_ptr(),
    )


def _device_args(t: torch.Tensor) -> tuple[int, ...]:
    """The trailing arguments of a core call on t's device: (device index, cudaStream_t) of the
    current torch stream on CUDA, nothing on the CPU."""
    if t.device.type != "cuda":
        return ()
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream


def _register(op: _Op) -> None:
    """Registers torch.ops.retro.<op.name> and <op.name>_backward with fake and autograd."""
    lib = f"retro::{op.name}"
    options = "int chunk_size, int q_offset, float scale, float rope_base"
    devices = ("cpu", "cuda") if CUDA_MAX_KEY_SLOTS > 0 else ("cpu",)

    def forward(q, k, v, nbr_lens, chunk_size, q_offset, scale, rope_base):
        q, k = rotary.rotate(op.core, q, k, chunk_size, q_offset, rope_base, kernel=True)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        lens = None if nbr_lens is None else nbr_lens.contiguous()
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=_lse_dtype(q.dtype), device=q.device)
        params = _params(op, q, k, lens, chunk_size, q_offset, scale)
        run = _core.cuda_attention_forward if q.is_cuda else _core.attention_forward
        run(params, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
            *_device_args(q))
        return out, lse

    def backward(q, k, v, nbr_lens, out, lse, grad_out, chunk_size, q_offset, scale, rope_base):
        q, k = rotary.rotate(op.core, q, k, chunk_size, q_offset, rope_base, kernel=True)
        q, k, v, out, lse, grad_out = (t.contiguous() for t in (q, k, v, out, lse, grad_out))
        lens = None if nbr_lens is None else nbr_lens.contiguous()
        dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
        params = _params(op, q, k, lens, chunk_size, q_offset, scale)
        pointers = [t.data_ptr() for t in (q, k, v, out, lse, grad_out, dq, dk, dv)]
        if q.is_cuda:  # the CUDA backward takes a (B, ..., H) float32 workspace for rowsum(dO O)
            delta = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            _core.cuda_attention_backward(params, *pointers, delta.data_ptr(), *_device_args(q))
        else:
            _core.attention_backward(params, *pointers)
        dq, dk = rotary.rotate(op.core, dq, dk, chunk_size, q_offset, rope_base, inverse=True,
                                kernel=True)
        return dq, dk, dv

    forward_op = torch.library.custom_op(
        lib, forward, mutates_args=(), device_types=devices,
        schema=f"(Tensor q, Tensor k, Tensor v, Tensor? nbr_lens, {options}) -> (Tensor, Tensor)")
    backward_op = torch.library.custom_op(
        f"{lib}_backward", backward, mutates_args=(), device_types=devices,
        schema="(Tensor q, Tensor k, Tensor v, Tensor? nbr_lens, Tensor out, Tensor lse, "
               f"Tensor grad_out, {options}) -> (Tensor, Tensor, Tensor)")

    @forward_op.register_fake
    def _(q, k, v, nbr_lens, chunk_size, q_offset, scale, rope_base):
        return torch.empty_like(q), q.new_empty(q.shape[:-1], dtype=_lse_dtype(q.dtype))

    @backward_op.register_fake
    def _(q, k, v, nbr_lens, out, lse, grad_out, chunk_size, q_offset, scale, rope_base):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, nbr_lens, *options = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, nbr_lens, out, lse)
        ctx.options = options

    def autograd_backward(ctx, grad_out, grad_lse):
        q, k, v, nbr_lens, out, lse = ctx.saved_tensors
        dq, dk, dv = backward_op(q, k, v, nbr_lens, out, lse, grad_out, *ctx.options)
        return dq, dk, dv, None, None, None, None, None

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)


for _op in (CHUNKED_CROSS, NEIGHBOUR_SELF, NEIGHBOUR_CROSS):
    _register(_op)


def _check(op: _Op, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           nbr_lens: torch.Tensor | None, rope_base: float) -> None:
    """Clear errors for wrong ranks, shapes, dtypes and devices (the kernel trusts its inputs)."""
    def fail(message: str) -> None:
        raise ValueError(f"{op.name}: {message}")

    for name, t, rank in (("q", q, op.q_rank), ("k", k, op.k_rank), ("v", v, op.k_rank)):
        if not isinstance(t, torch.Tensor):
            fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            fail(f"{name} must have {rank} dimensions, got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        fail(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        fail(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in _DTYPES or (q.dtype == torch.float16 and q.device.type == "cpu"):
        fail(f"dtype must be float32, bfloat16 or float64 (or float16 on CUDA), got {q.dtype}")
    if not (q.device == k.device == v.device):
        fail(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if rope_base < 0 or (rope_base > 0 and q.shape[-1] % 2):
        fail(f"rope_base must be >= 0 (0: no positions), and rotary positions need an even "
             f"head width; got rope_base={rope_base}, head width {q.shape[-1]}")
    nbr = q if op.q_rank == 6 else k
    b, n_chunks, n_nbrs, _, h, dh = nbr.shape
    other = k if op.q_rank == 6 else q
    if op is NEIGHBOUR_SELF and q.shape != k.shape:
        fail(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if op is not NEIGHBOUR_SELF and (other.shape[0] != b or other.shape[2:] != (h, dh)):
        fail(f"batch, heads and head width must match: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if nbr_lens is None:
        return
    if not isinstance(nbr_lens, torch.Tensor) or nbr_lens.dtype != torch.int32:
        fail("nbr_lens must be an int32 tensor (B, L, K)")
    if tuple(nbr_lens.shape) != (b, n_chunks, n_nbrs):
        fail(f"nbr_lens must have shape (B, L, K) = {(b, n_chunks, n_nbrs)}, "
             f"got {tuple(nbr_lens.shape)}")
    if nbr_lens.device != q.device:
        fail(f"nbr_lens is on {nbr_lens.device}, q on {q.device}")
    # the CPU core checks the values itself; on a device it costs a sync, so eager calls pay it
    # and compiled graphs (whose lengths come from checked data) skip it
    r = nbr.shape[3]
    if q.device.type != "cpu" and not torch.compiler.is_compiling():
        bad = (nbr_lens < 0) | (nbr_lens > r)
        if bool(bad.any()):
            fail(f"nbr_lens must lie in [0, R={r}]; found {nbr_lens[bad][0].item()}")


def _attention(op: _Op, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               nbr_lens: torch.Tensor | None, chunk_size: int, q_offset: int,
               scale: float | None, rope_base: float) -> torch.Tensor:
    """Checks a call, then runs the core's op, or the reference where no kernel takes it."""
    _check(op, q, k, v, nbr_lens, rope_base)
    if not op.runs_core(q, k, chunk_size):
        return reference.attention_ref(op.core, q, k, v, nbr_lens, chunk_size=chunk_size,
                                       q_offset=q_offset, scale=scale, rope_base=rope_base)
    run = getattr(torch.ops.retro, op.name)
    return run(q, k, v, nbr_lens, chunk_size, q_offset, _scale(scale, q.shape[-1]),
               float(rope_base))[0]


def chunked_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            nbr_lens: torch.Tensor | None = None, *, chunk_size: int = 64,
                            q_offset: int = 0, scale: float | None = None,
                            rope_base: float = 0.0) -> torch.Tensor:
    """RETRO's chunked cross-attention.

    Args:
        q: (B, T, H, Dh) decoder queries at absolute positions q_offset .. q_offset + T - 1.
        k, v: (B, L, K, R, H, Dh) keys and values of the K encoded neighbours of each of L chunks.
        nbr_lens: (B, L, K) int32 real tokens per neighbour (a prefix; 0 = none), None = all R.
        chunk_size: m; position p >= m - 1 attends to chunk u = (p - (m - 1)) // m if u < L.
        q_offset: absolute position of q's first row (incremental decoding).
        scale: score scale, default 1 / sqrt(Dh).
        rope_base: > 0: rotary positions, query p at p - u*m, key j of a neighbour at j
            (:mod:`retro.ops.rotary`); 0: none.

    Returns:
        (B, T, H, Dh); zero where a token has nothing to attend to.
    """
    return _attention(CHUNKED_CROSS, q, k, v, nbr_lens, chunk_size, q_offset, scale, rope_base)


def neighbour_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             nbr_lens: torch.Tensor | None = None, *, scale: float | None = None,
                             rope_base: float = 0.0) -> torch.Tensor:
    """The encoder's bidirectional self-attention inside each neighbour.

    Args:
        q, k, v: (B, L, K, R, H, Dh) neighbour tokens.
        nbr_lens: (B, L, K) int32 real tokens per neighbour, None = all R.
        scale: score scale, default 1 / sqrt(Dh).
        rope_base: > 0: rotary positions 0 .. R-1 on both sides; 0: none.

    Returns:
        (B, L, K, R, H, Dh); zero for padding tokens (r >= nbr_lens).
    """
    return _attention(NEIGHBOUR_SELF, q, k, v, nbr_lens, 0, 0, scale, rope_base)


def neighbour_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              nbr_lens: torch.Tensor | None = None, *, chunk_size: int = 64,
                              scale: float | None = None,
                              rope_base: float = 0.0) -> torch.Tensor:
    """The encoder's cross-attention from neighbour tokens to the decoder states of their chunk.

    Args:
        q: (B, L, K, R, H, Dh) neighbour tokens.
        k, v: (B, T, H, Dh) decoder states; chunk l is positions [l m, min((l + 1) m, T)).
        nbr_lens: (B, L, K) int32 real tokens per neighbour, None = all R.
        chunk_size: m.
        scale: score scale, default 1 / sqrt(Dh).
        rope_base: > 0: rotary positions, neighbour token j at j, decoder position l*m + i at i;
            0: none.

    Returns:
        (B, L, K, R, H, Dh); zero for padding tokens and chunks without decoder positions.
    """
    return _attention(NEIGHBOUR_CROSS, q, k, v, nbr_lens, chunk_size, 0, scale, rope_base)
