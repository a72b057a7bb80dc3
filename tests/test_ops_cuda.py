"""The fused CUDA attention kernels (cuda/attention.cu) against the float64 reference: outputs and
every gradient within 2x the error of the same math run in low precision, odd shapes, short and
missing neighbours, q_offset, single decoding steps, a non-default stream, poisoned outputs,
opcheck and torch.compile. Skipped without a CUDA build and a GPU."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import retro  # noqa: E402
import retro.ops as ops  # noqa: E402
from retro import _core  # noqa: E402
from retro.ops.attention import CHUNKED_CROSS, NEIGHBOUR_CROSS, NEIGHBOUR_SELF, _params  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (retro.cuda_available() and torch.cuda.is_available()),
                       reason="needs a CUDA build of retro and a usable GPU"),
]

OPS = {
    "cca": (ops.chunked_cross_attention, ops.chunked_cross_attention_ref, CHUNKED_CROSS),
    "self": (ops.neighbour_self_attention, ops.neighbour_self_attention_ref, NEIGHBOUR_SELF),
    "cross": (ops.neighbour_cross_attention, ops.neighbour_cross_attention_ref, NEIGHBOUR_CROSS),
}

# (b, t, h, n_chunks, n_nbrs, r, m, q_offset): odd sizes; the training shape (several key tiles for
# CCA, several query tiles for the encoder); T beyond the chunks; one decoding step.
SHAPES = {
    "odd": (2, 75, 3, 2, 3, 20, 32, 7),
    "train": (2, 256, 2, 4, 2, 128, 64, 0),
    "long-t": (1, 150, 2, 2, 1, 72, 64, 0),
    "decode": (2, 1, 2, 3, 2, 128, 64, 130),
}


def make_inputs(name, shape, dh, seed=0):
    """float64 q, k, v on the GPU for op `name` and (B, L, K) lengths: full, short and missing."""
    b, t, h, n_chunks, n_nbrs, r, m, q_offset = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    dec = lambda: torch.randn(b, t, h, dh, generator=g, dtype=torch.float64)  # noqa: E731
    nbr = lambda: torch.randn(b, n_chunks, n_nbrs, r, h, dh, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = {"cca": (dec, nbr, nbr), "self": (nbr, nbr, nbr), "cross": (nbr, dec, dec)}[name]
    nbr_lens = torch.randint(0, r + 1, (b, n_chunks, n_nbrs), generator=g, dtype=torch.int32)
    nbr_lens.view(-1)[0], nbr_lens.view(-1)[-1] = 0, r
    opts = {"cca": {"chunk_size": m, "q_offset": q_offset}, "self": {}, "cross": {"chunk_size": m}}[name]
    return [x.cuda() for x in (q(), k(), v(), nbr_lens)], opts


@pytest.fixture(params=["fused", "split"])
def backward(request):
    """Runs a test with the one-kernel backward allowed (where it applies) and with two kernels."""
    _core.cuda_set_fused_backward(request.param == "fused")
    yield request.param
    _core.cuda_set_fused_backward(True)


def forward_backward(fn, q, k, v, nbr_lens, opts, grad, **extra):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, nbr_lens, **opts, **extra)
    out.backward(grad)
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dh", [64, 128])
@pytest.mark.parametrize("rope_base", [0.0, 1e4])
def test_kernels_match_the_reference(name, shape, dtype, dh, rope_base, backward):
    """Error against float64 within 2x that of the reference computed in `dtype` (no upcast)."""
    op, ref, spec = OPS[name]
    (q, k, v, nbr_lens), opts = make_inputs(name, shape, dh, seed=dh + len(shape))
    opts = {**opts, "rope_base": rope_base}
    low = [x.to(dtype) for x in (q, k, v)]
    assert spec.runs_core(low[0], low[1], opts.get("chunk_size", 64))
    grad = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).cuda()
    exact = forward_backward(ref, q, k, v, nbr_lens, opts, grad)
    ours = forward_backward(op, *low, nbr_lens, opts, grad.to(dtype))
    theirs = forward_backward(ref, *low, nbr_lens, opts, grad.to(dtype), upcast=False)
    for what, e, a, b in zip(("out", "grad q", "grad k", "grad v"), exact, ours, theirs):
        assert a.dtype == dtype and a.shape == e.shape, what
        assert a.isfinite().all(), what
        our_error = (a.double() - e).abs().max().item()
        ref_error = (b.double() - e).abs().max().item()
        scale = e.abs().max().item()
        # the floor covers gradients that are exactly zero in float64 (one key: dS = 0); rotary q
        # and k gradients are rounded to dtype, rotated back and rounded again
        rounding = torch.finfo(dtype).eps * scale if rope_base and what in ("grad q", "grad k") else 0.0
        assert our_error <= 2 * ref_error + rounding + 1e-3 * scale + 1e-4, (what, our_error, ref_error, scale)


def poisoned_call(name, shape, dtype, dh, stream):
    """Runs the kernels directly on NaN-filled outputs and scratch on `stream`; returns them."""
    (q, k, v, nbr_lens), opts = make_inputs(name, shape, dh)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    spec = OPS[name][2]
    params = _params(spec, q, k, nbr_lens, opts.get("chunk_size", 64), opts.get("q_offset", 0), 1 / math.sqrt(dh))
    where = (q.device.index, stream.cuda_stream)
    with torch.cuda.stream(stream):
        out = torch.full_like(q, math.nan)
        lse = torch.full(q.shape[:-1], math.nan, dtype=torch.float32, device=q.device)
        _core.cuda_attention_forward(params, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                     lse.data_ptr(), *where)
        grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(2)).to(q)
        grads = [torch.full_like(x, math.nan) for x in (q, k, v)]
        delta = torch.full(q.shape[:-1], math.nan, dtype=torch.float32, device=q.device)
        _core.cuda_attention_backward(params, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                      lse.data_ptr(), grad_out.data_ptr(), *(g.data_ptr() for g in grads),
                                      delta.data_ptr(), *where)
    stream.synchronize()
    return out, lse, grads


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_output_element_is_written_on_a_side_stream(name, shape):
    out, lse, grads = poisoned_call(name, shape, torch.bfloat16, 64, torch.cuda.Stream())
    assert not out.isnan().any() and not lse.isnan().any()
    for g in grads:
        assert not g.isnan().any()


def test_side_stream_equals_default_stream():
    side = poisoned_call("cca", "train", torch.bfloat16, 128, torch.cuda.Stream())
    default = poisoned_call("cca", "train", torch.bfloat16, 128, torch.cuda.default_stream())
    torch.testing.assert_close(side[0], default[0], rtol=0, atol=0)
    for a, b in zip(side[2], default[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", OPS)
def test_opcheck_on_cuda(name):
    (q, k, v, nbr_lens), opts = make_inputs(name, "odd", 64)
    q, k, v = (x.to(torch.bfloat16).requires_grad_() for x in (q, k, v))
    op = getattr(torch.ops.retro, OPS[name][2].name)
    args = (q, k, v, nbr_lens, opts.get("chunk_size", 64), opts.get("q_offset", 0), 0.125, 1e4)
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_on_cuda():
    (q, k, v, nbr_lens), opts = make_inputs("cca", "train", 64)
    q, k, v = (x.to(torch.bfloat16) for x in (q, k, v))

    def f(q, k, v):
        return ops.chunked_cross_attention(q, k, v, nbr_lens, **opts).float().sum(-1) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


@pytest.mark.parametrize("shift", [100, -100])
def test_lengths_out_of_range_are_refused(shift):
    (q, k, v, nbr_lens), opts = make_inputs("cca", "odd", 64)
    q, k, v = (x.to(torch.bfloat16) for x in (q, k, v))
    with pytest.raises(ValueError, match="nbr_lens must lie in"):
        ops.chunked_cross_attention(q, k, v, nbr_lens + shift, **opts)


def test_unsupported_calls_take_the_reference():
    (q, k, v, nbr_lens), opts = make_inputs("cca", "odd", 64)
    assert not CHUNKED_CROSS.runs_core(q.float(), k.float(), 32)  # float32: reference
    out = ops.chunked_cross_attention(q.float(), k.float(), v.float(), nbr_lens, **opts)
    torch.testing.assert_close(out, ops.chunked_cross_attention_ref(q.float(), k.float(), v.float(), nbr_lens, **opts))
    params = _params(CHUNKED_CROSS, q.float(), k.float(), nbr_lens, 32, 7, 0.1)
    assert "bfloat16 and float16" in _core.cuda_attention_unsupported(params)
