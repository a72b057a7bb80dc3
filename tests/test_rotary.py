"""Rotary positions of the attention ops (retro.ops.rotary): the rotation against a complex-number
definition, relative invariance, and the documented alignment of CCA queries and neighbour keys."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import retro.ops as ops  # noqa: E402
from retro.ops import rotary  # noqa: E402


def test_apply_rope_is_a_complex_rotation():
    """Pair (i, i + Dh/2) as a complex number, multiplied by exp(i * pos * base^(-2i/Dh))."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 10, generator=g, dtype=torch.float64)  # (N, H, Dh)
    pos = torch.tensor([0, 1, 5, -3, 17, 100, 2])
    z = torch.complex(x[..., :5], x[..., 5:])
    freq = 500.0 ** (-torch.arange(0, 10, 2, dtype=torch.float64) / 10)
    expected = z * torch.polar(torch.ones(7, 5, dtype=torch.float64), pos[:, None] * freq)[:, None]
    got = rotary.apply_rope(x, pos, 500.0)
    torch.testing.assert_close(got, torch.cat([expected.real, expected.imag], -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rotary.apply_rope(got, -pos, 500.0), x, rtol=1e-12, atol=1e-12)


def test_scores_depend_only_on_the_relative_position():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, 1, 8, generator=g, dtype=torch.float64).unbind(0)  # (1, 1, 8) each
    def score(p, j):
        return (rotary.apply_rope(q, torch.tensor([p]), 1e4) * rotary.apply_rope(k, torch.tensor([j]), 1e4)).sum()
    torch.testing.assert_close(score(3, 10), score(50, 57))
    assert not torch.isclose(score(3, 10), score(3, 11))


def test_cca_query_positions_count_from_the_attended_chunk():
    """m = 4: position p attends to chunk u = (p - 3) // 4 and sits at p - 4u."""
    got = rotary.cca_query_positions(12, 0, 4, torch.device("cpu")).tolist()
    assert got[3:] == [3, 4, 5, 6, 3, 4, 5, 6, 3]
    # an incremental call continues the same positions
    assert rotary.cca_query_positions(3, 9, 4, torch.device("cpu")).tolist() == got[9:]


@pytest.mark.parametrize("rope_base", [1e4])
def test_cca_meets_its_own_copy_at_distance_zero(rope_base):
    """Every key of the neighbour is the query's own vector: a rotary query attends most to the key
    at its own position p - u*m, i.e. the token it is when the neighbour is C_u C_{u+1}."""
    m, r, dh = 4, 8, 16
    g = torch.Generator().manual_seed(2)
    base_vec = torch.randn(dh, generator=g, dtype=torch.float64) * 4
    t = 3 * m
    q = base_vec.expand(1, t, 1, dh).contiguous()
    k = base_vec.expand(1, 3, 1, r, 1, dh).contiguous()
    v = torch.eye(r, dtype=torch.float64).view(1, 1, 1, r, 1, r).expand(1, 3, 1, r, 1, r)
    v = torch.nn.functional.pad(v, (0, dh - r)).contiguous()  # value j: one-hot of j
    out = ops.chunked_cross_attention(q, k, v, chunk_size=m, rope_base=rope_base)
    for p in range(m - 1, t):
        u = (p - (m - 1)) // m
        if u < 3:
            assert out[0, p, 0, :r].argmax().item() == p - u * m, p


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 0.0), (torch.float32, 1e-6),
                                        (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", [(7, 1, 2), (3, 5, 11, 3, 6), (2, 1, 2, 33, 4, 10)])
def test_the_core_rotation_equals_apply_rope(dtype, tol, shape):
    """The ops' one-pass kernel (apply_rope_kernel) against apply_rope, negative positions too,
    into a NaN-poisoned output and in place."""
    from retro import _core
    from retro.ops.rotary import _CORE_DTYPES, apply_rope_kernel

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    n, heads, dh = shape[-3:]
    positions = torch.randint(-300, 300, (n,), generator=g)
    want = rotary.apply_rope(x, positions, 500.0)
    assert torch.allclose(apply_rope_kernel(x, positions, 500.0).double(), want.double(),
                          atol=tol, rtol=tol)
    out = torch.full_like(x, math.nan)
    outer = x.numel() // (n * heads * dh)
    _core.rotate_positions(_CORE_DTYPES[dtype], outer, n, heads, dh, 500.0,
                           positions.data_ptr(), x.data_ptr(), out.data_ptr())
    assert not out.isnan().any()
    y = x.clone()
    _core.rotate_positions(_CORE_DTYPES[dtype], outer, n, heads, dh, 500.0,
                           positions.data_ptr(), y.data_ptr(), y.data_ptr())
    assert torch.equal(y, out)


def test_the_core_rotation_refuses_an_odd_head_width():
    from retro import _core

    x = torch.zeros(2, 1, 3)
    with pytest.raises(ValueError, match="even head_dim"):
        _core.rotate_positions("float32", 1, 2, 1, 3, 100.0, torch.zeros(2, dtype=torch.int64)
                               .data_ptr(), x.data_ptr(), x.data_ptr())
