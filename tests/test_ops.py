"""RETRO's attention ops (retro.ops, core CPU kernels) against their pure-PyTorch references:
forward and every gradient on odd shapes, float64 gradcheck of the core's own backward, opcheck,
torch.compile, poisoned outputs, and clear errors for bad input."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support import BF16_KERNELS  # noqa: E402

import retro  # noqa: E402
import retro.ops as ops  # noqa: E402
from retro import _core  # noqa: E402
from retro.ops.attention import CHUNKED_CROSS, NEIGHBOUR_CROSS, NEIGHBOUR_SELF, _params  # noqa: E402

OPS = {
    "cca": (ops.chunked_cross_attention, ops.chunked_cross_attention_ref),
    "self": (ops.neighbour_self_attention, ops.neighbour_self_attention_ref),
    "cross": (ops.neighbour_cross_attention, ops.neighbour_cross_attention_ref),
}


def make_inputs(name, dtype, *, b=2, t=75, h=3, dh=12, n_chunks=2, n_nbrs=3, r=20, m=32, seed=0, lens="mixed"):
    """Random q, k, v of op `name` and (B, L, K) lengths: full, short and missing neighbours."""
    g = torch.Generator().manual_seed(seed)
    dec = lambda: torch.randn(b, t, h, dh, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    nbr = lambda: torch.randn(b, n_chunks, n_nbrs, r, h, dh, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    q, k, v = {"cca": (dec, nbr, nbr), "self": (nbr, nbr, nbr), "cross": (nbr, dec, dec)}[name]
    q, k, v = q(), k(), v()
    if lens == "none":
        nbr_lens = None
    else:
        nbr_lens = torch.randint(0, r + 1, (b, n_chunks, n_nbrs), generator=g, dtype=torch.int32)
        nbr_lens.view(-1)[0], nbr_lens.view(-1)[-1] = 0, r  # a missing and a full neighbour
    return q, k, v, nbr_lens


def options(name, m=32, q_offset=0, rope_base=0.0):
    opts = {"cca": {"chunk_size": m, "q_offset": q_offset}, "self": {}, "cross": {"chunk_size": m}}[name]
    return {**opts, "rope_base": rope_base}


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("lens", ["mixed", "none"])
@pytest.mark.parametrize("rope_base", [0.0, 10.0])
def test_gradcheck_of_the_core_backward_in_float64(name, lens, rope_base):
    q, k, v, nbr_lens = make_inputs(name, torch.float64, b=1, t=21, h=2, dh=4, n_chunks=2, n_nbrs=2, r=5, m=8, lens=lens)
    op, _ = OPS[name]
    inputs = tuple(x.requires_grad_() for x in (q, k, v))
    opts = options(name, 8, 3, rope_base)
    assert torch.autograd.gradcheck(lambda q, k, v: op(q, k, v, nbr_lens, **opts), inputs)


def forward_backward(fn, q, k, v, nbr_lens, opts, grad):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, nbr_lens, **opts)
    out.backward(grad)
    return [out.detach(), q.grad, k.grad, v.grad]


# float32, and bfloat16 on every bf16 product kernel this CPU has
DTYPE_KERNELS = [(torch.float32, "none")] + [(torch.bfloat16, kernel) for kernel in BF16_KERNELS]


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype, bf16_kernel", DTYPE_KERNELS)
@pytest.mark.parametrize("q_offset", [0, 7])
@pytest.mark.parametrize("dh", [12, 40])  # 40: the 16 x 16 SIMD transposes and a tail of 8
@pytest.mark.parametrize("rope_base", [0.0, 10000.0])
def test_forward_and_gradients_match_the_reference(name, dtype, bf16_kernel, q_offset, dh, rope_base):
    """Error against the float64 reference within 2x that of the reference run in `dtype`."""
    check_against_the_reference(name, dtype, bf16_kernel, dh=dh, seed=q_offset, q_offset=q_offset,
                                rope_base=rope_base)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("bf16_kernel", BF16_KERNELS)
@pytest.mark.parametrize("sizes", [dict(dh=1, r=1, m=1, t=3), dict(dh=33, r=17, m=5, t=23), dict(dh=64, r=37, m=19, t=61)])
def test_bf16_odd_sizes_match_the_reference(name, bf16_kernel, sizes):
    """Tails of every tile dimension: rows, keys and head widths off the multiples of 16 and 32."""
    dh, r, m, t = sizes["dh"], sizes["r"], sizes["m"], sizes["t"]
    check_against_the_reference(name, torch.bfloat16, bf16_kernel, dh=dh, r=r, m=m, t=t, n_chunks=-(-t // m), seed=dh)


def check_against_the_reference(name, dtype, bf16_kernel, *, seed, q_offset=0, m=32, rope_base=0.0, **sizes):
    retro.set_bf16_kernel(bf16_kernel)
    q, k, v, nbr_lens = make_inputs(name, torch.float64, seed=seed, m=m, **sizes)
    opts = options(name, m=m, q_offset=q_offset, rope_base=rope_base)
    op, ref = OPS[name]
    grad = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = forward_backward(ref, q, k, v, nbr_lens, opts, grad)
    low = [x.to(dtype) for x in (q, k, v)]
    ours = forward_backward(op, *low, nbr_lens, opts, grad.to(dtype))
    theirs = forward_backward(ref, *low, nbr_lens, opts, grad.to(dtype))
    for what, e, a, b in zip(("out", "grad q", "grad k", "grad v"), exact, ours, theirs):
        assert a.dtype == dtype and a.shape == e.shape, what
        our_error = (a.double() - e).abs().max().item()
        ref_error = (b.double() - e).abs().max().item()
        scale = e.abs().max().item()
        # rotary: the kernel's q and k gradients are rounded to dtype, rotated back, rounded again
        rounding = torch.finfo(dtype).eps * scale if rope_base and what in ("grad q", "grad k") else 0.0
        assert our_error <= 2 * ref_error + rounding + 1e-6 * scale, (what, our_error, ref_error)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(list(OPS)),
    b=st.integers(1, 2),
    t=st.integers(1, 40),
    h=st.integers(1, 3),
    dh=st.integers(1, 9),
    n_chunks=st.integers(1, 4),
    n_nbrs=st.integers(1, 3),
    r=st.integers(1, 12),
    m=st.integers(1, 12),
    q_offset=st.integers(0, 30),
    seed=st.integers(0, 2**31),
    rope=st.booleans(),
)
def test_any_shape_matches_the_reference_in_float64(name, b, t, h, dh, n_chunks, n_nbrs, r, m, q_offset, seed, rope):
    dh = 2 * dh if rope else dh  # rotary positions pair the halves of a head
    q, k, v, nbr_lens = make_inputs(name, torch.float64, b=b, t=t, h=h, dh=dh, n_chunks=n_chunks, n_nbrs=n_nbrs, r=r, m=m, seed=seed)
    op, ref = OPS[name]
    opts = options(name, m, q_offset, 100.0 if rope else 0.0)
    grad = torch.randn(q.shape, dtype=torch.float64)
    for a, e in zip(forward_backward(op, q, k, v, nbr_lens, opts, grad), forward_backward(ref, q, k, v, nbr_lens, opts, grad)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_cca_causal_shift():
    """Tokens before chunk_size - 1 and tokens of chunks past L get exactly zero."""
    q, k, v, _ = make_inputs("cca", torch.float32, t=100, n_chunks=2, m=32, lens="none")
    out = ops.chunked_cross_attention(q, k, v, chunk_size=32)
    assert out[:, :31].abs().max() == 0 and out[:, 95:].abs().max() == 0
    assert out[:, 31:95].abs().min(dim=-1).values.gt(0).all()
    # one decoding step at absolute position 40 equals row 40 of the full pass
    step = ops.chunked_cross_attention(q[:, 40:41], k, v, chunk_size=32, q_offset=40)
    torch.testing.assert_close(step, out[:, 40:41], rtol=0, atol=0)


def poisoned_call(name, dtype):
    """Runs the core forward and backward on NaN-filled outputs; returns them."""
    q, k, v, nbr_lens = make_inputs(name, dtype)
    op = {"cca": CHUNKED_CROSS, "self": NEIGHBOUR_SELF, "cross": NEIGHBOUR_CROSS}[name]
    params = _params(op, q, k, nbr_lens, 32, 3, 0.3)
    lse_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.full_like(q, math.nan)
    lse = torch.full(q.shape[:-1], math.nan, dtype=lse_dtype)
    _core.attention_forward(params, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr())
    grad_out = torch.randn_like(q)
    grads = [torch.full_like(x, math.nan) for x in (q, k, v)]
    _core.attention_backward(params, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
                             grad_out.data_ptr(), *(g.data_ptr() for g in grads))
    return out, lse, grads


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype, bf16_kernel", [(torch.float64, "none"), *DTYPE_KERNELS])
def test_every_output_element_is_written(name, dtype, bf16_kernel):
    retro.set_bf16_kernel(bf16_kernel)
    out, lse, grads = poisoned_call(name, dtype)
    assert not out.isnan().any() and not lse.isnan().any()
    for g in grads:
        assert not g.isnan().any()


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    q, k, v, nbr_lens = make_inputs(name, torch.float32, b=1, t=20, h=2, dh=4, n_chunks=2, n_nbrs=2, r=6, m=8)
    op = getattr(torch.ops.retro, {"cca": "chunked_cross_attention", "self": "neighbour_self_attention",
                                   "cross": "neighbour_cross_attention"}[name])
    for lens, rope_base in ((nbr_lens, 0.0), (None, 0.0), (nbr_lens, 50.0)):
        args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), lens, 8, 2, 0.5, rope_base)
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    q, k, v, nbr_lens = make_inputs("cca", torch.float32, t=40, m=16)

    def f(q, k, v):
        return ops.chunked_cross_attention(q, k, v, nbr_lens, chunk_size=16, rope_base=1e4).sum(-1) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda q, k, v, l: (q[0], k, v, l), "q must have 4 dimensions"),
        (lambda q, k, v, l: (q, k, v[..., :-1], l), "k and v must have the same shape"),
        (lambda q, k, v, l: (q, k.double(), v.double(), l), "must share a dtype"),
        (lambda q, k, v, l: (q.half(), k.half(), v.half(), l), "dtype must be float32, bfloat16 or float64"),
        (lambda q, k, v, l: (q[..., :-1], k, v, l), "batch, heads and head width must match"),
        (lambda q, k, v, l: (q, k, v, l.long()), "nbr_lens must be an int32 tensor"),
        (lambda q, k, v, l: (q, k, v, l[:, :1]), "nbr_lens must have shape"),
        (lambda q, k, v, l: (q, k, v, l + 100), "nbr_lens must lie in"),
        (lambda q, k, v, l: (q, k, v, l - 100), "nbr_lens must lie in"),
    ],
)
def test_bad_input_is_refused_clearly(mutate, message):
    q, k, v, nbr_lens = make_inputs("cca", torch.float32)
    with pytest.raises(ValueError, match=message):
        ops.chunked_cross_attention(*mutate(q, k, v, nbr_lens), chunk_size=32)


@pytest.mark.parametrize("rope_base, dh", [(-1.0, 12), (100.0, 11)])
def test_bad_rope_base_is_refused_clearly(rope_base, dh):
    q, k, v, nbr_lens = make_inputs("cca", torch.float32, dh=dh)
    with pytest.raises(ValueError, match="rope_base must be >= 0"):
        ops.chunked_cross_attention(q, k, v, nbr_lens, chunk_size=32, rope_base=rope_base)


def test_bad_chunk_size_and_offset():
    q, k, v, nbr_lens = make_inputs("cca", torch.float32)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        ops.chunked_cross_attention(q, k, v, nbr_lens, chunk_size=0)
    with pytest.raises(ValueError, match="q_offset must be non-negative"):
        ops.chunked_cross_attention(q, k, v, nbr_lens, q_offset=-1)
