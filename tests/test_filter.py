"""The quantized filtering scan (simd pq_filter8 with QuantizedTable's limit): it must never drop a
vector whose float distance is within the threshold (that is what keeps filtered search results
identical to the float scan), and it must drop most of the others (that is what makes it fast)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retro import _core

BLOCK = _core._scan_block
FILTER_LEVELS = [level for level in ("avx512",) if _core.best_simd_level() == level]
pytestmark = pytest.mark.skipif(not FILTER_LEVELS, reason="the filter needs AVX-512 VBMI")


def blocked(per_vector):
    """(n, pq_m) codes -> the blocked layout codes[(block * pq_m + m) * BLOCK + lane]."""
    n, pq_m = per_vector.shape
    padded = -(-n // BLOCK) * BLOCK
    full = np.zeros((padded, pq_m), np.uint8)
    full[:n] = per_vector
    return np.ascontiguousarray(full.reshape(-1, BLOCK, pq_m).transpose(0, 2, 1)).ravel()


def float_distances(per_vector, lut, bias, terms):
    """The float scan in its order: acc = bias (+ term); acc += lut[m, code_m]."""
    acc = np.full(len(per_vector), bias, np.float32)
    if terms is not None:
        acc = acc + terms[: len(per_vector)]
    for m in range(lut.shape[0]):
        acc = acc + lut[m, per_vector[:, m]]
    return acc


def case(seed, n, pq_m, spread, with_terms):
    rng = np.random.default_rng(seed)
    per_vector = rng.integers(0, 256, (n, pq_m), dtype=np.uint8)
    scales = 10.0 ** rng.uniform(-spread, spread, (pq_m, 1))  # rows of very different widths
    lut = (rng.standard_normal((pq_m, 256)) * scales + rng.standard_normal((pq_m, 1))).astype(np.float32)
    bias = np.float32(rng.standard_normal() * 10)
    terms = (rng.standard_normal(-(-n // BLOCK) * BLOCK) * 5).astype(np.float32) if with_terms else None
    return per_vector, lut, bias, terms


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 700),
    pq_m=st.integers(1, 96),
    spread=st.floats(0, 3),
    with_terms=st.booleans(),
    quantile=st.floats(0, 1),
)
def test_filter_keeps_every_vector_within_the_threshold(seed, n, pq_m, spread, with_terms, quantile):
    per_vector, lut, bias, terms = case(seed, n, pq_m, spread, with_terms)
    exact = float_distances(per_vector, lut, bias, terms)
    threshold = np.float32(np.quantile(exact, quantile))
    for level in FILTER_LEVELS:
        survivors = _core._pq_filter8(level, blocked(per_vector), lut, n, float(bias), terms, float(threshold))
        assert np.all(np.diff(survivors) > 0) and (len(survivors) == 0 or survivors[-1] < n)
        within = np.flatnonzero(exact <= threshold)
        assert np.isin(within, survivors).all(), np.setdiff1d(within, survivors)


def test_filter_on_ties_at_the_threshold():
    """Every vector at exactly the threshold's distance passes (all codes equal -> equal sums)."""
    lut = np.random.default_rng(1).standard_normal((48, 256)).astype(np.float32)
    per_vector = np.full((200, 48), 7, np.uint8)
    threshold = float_distances(per_vector, lut, np.float32(0.5), None)[0]
    survivors = _core._pq_filter8("avx512", blocked(per_vector), lut, 200, 0.5, None, float(threshold))
    assert np.array_equal(survivors, np.arange(200))


@pytest.mark.parametrize("with_terms", [False, True])
def test_filter_prunes_most_vectors_beyond_a_tight_threshold(with_terms):
    """The filter's margin is pq_m * step / 2 plus rounding: with 48 sub-quantizers a threshold at
    the 1% quantile keeps under 3% (observed 1.35%)."""
    per_vector, lut, bias, terms = case(5, 20_000, 48, 0.3, with_terms)
    exact = float_distances(per_vector, lut, bias, terms)
    threshold = np.float32(np.quantile(exact, 0.01))
    survivors = _core._pq_filter8("avx512", blocked(per_vector), lut, len(exact), float(bias), terms, float(threshold))
    assert np.isin(np.flatnonzero(exact <= threshold), survivors).all()
    assert len(survivors) < 0.03 * len(exact), len(survivors) / len(exact)


def test_filter_with_an_infinite_threshold_keeps_everything():
    per_vector, lut, bias, terms = case(3, 130, 8, 1, True)
    survivors = _core._pq_filter8("avx512", blocked(per_vector), lut, 130, float(bias), terms, np.inf)
    assert np.array_equal(survivors, np.arange(130))


def test_filter_is_refused_by_levels_without_it():
    per_vector, lut, bias, terms = case(3, 10, 8, 1, False)
    with pytest.raises(ValueError, match="has no filtering scan"):
        _core._pq_filter8("scalar", blocked(per_vector), lut, 10, float(bias), None, 0.0)
