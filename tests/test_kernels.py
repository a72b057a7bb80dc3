"""The SIMD kernels of cpp/src/simd/kernels.h, called per level through the test entry points of
retro._core, against numpy references."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from support import BF16_KERNELS, BF16_ORDER, SIMD_LEVELS

import retro
from retro import _core

BLOCK = _core._scan_block  # vectors per code block (IvfPqIndex::kBlock)


def scan_reference(codes, lut, bias, terms):
    """pq_scan8 in numpy float32, in the kernel's order: acc = bias (+ terms); acc += lut[m, c]."""
    pq_m = lut.shape[0]
    # codes[(block * pq_m + m) * BLOCK + lane] -> (vector, m)
    per_vector = codes.reshape(-1, pq_m, BLOCK).transpose(0, 2, 1).reshape(-1, pq_m)
    acc = np.full(len(per_vector), bias, dtype=np.float32)
    if terms is not None:
        acc = acc + terms
    for m in range(pq_m):
        acc = acc + lut[m, per_vector[:, m]]
    return acc


@pytest.mark.parametrize("with_terms", [False, True])
@pytest.mark.parametrize("pq_m", [1, 3, 8, 48])
@pytest.mark.parametrize("nblocks", [1, 3, 17])
@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_pq_scan8_is_bit_exact(level, nblocks, pq_m, with_terms):
    rng = np.random.default_rng(nblocks * 100 + pq_m)
    codes = rng.integers(0, 256, nblocks * pq_m * BLOCK, dtype=np.uint8)
    codes[:pq_m * BLOCK : 7] = 255  # the last table entry too
    # magnitudes over 6 decades so that any change of the summation order changes the rounding
    magnitudes = 10.0 ** rng.uniform(-3, 3, (pq_m, 256))
    lut = (rng.standard_normal((pq_m, 256)) * magnitudes).astype(np.float32)
    bias = np.float32(rng.standard_normal() * 100)
    terms = (rng.standard_normal(nblocks * BLOCK) * 50).astype(np.float32) if with_terms else None
    out = _core._pq_scan8(level, codes, lut, float(bias), terms)
    expected = scan_reference(codes, lut, bias, terms)
    assert out.dtype == np.float32 and out.shape == (nblocks * BLOCK,)
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))


def test_pq_scan8_rejects_bad_shapes():
    lut = np.zeros((4, 256), np.float32)
    with pytest.raises(ValueError, match="lut must be \\(pq_m, 256\\)"):
        _core._pq_scan8("scalar", np.zeros(64, np.uint8), np.zeros((4, 255), np.float32), 0.0)
    with pytest.raises(ValueError, match="multiple of pq_m \\* 64 bytes"):
        _core._pq_scan8("scalar", np.zeros(BLOCK * 4 + 1, np.uint8), lut, 0.0)
    with pytest.raises(ValueError, match="64 values per code block"):
        _core._pq_scan8("scalar", np.zeros(BLOCK * 4, np.uint8), lut, 0.0, np.zeros(15, np.float32))
    with pytest.raises(ValueError, match="unknown SIMD level"):
        _core._pq_scan8("neon", np.zeros(BLOCK * 4, np.uint8), lut, 0.0)


SIZES = [1, 5, 13, 33, 97, 131]


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_gemm_against_float64(level):
    rng = np.random.default_rng(7)
    for m, n, k in itertools.product(SIZES, SIZES, SIZES):
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32)
        c = _core._gemm(level, a, b)
        assert c.shape == (m, n) and c.dtype == np.float32
        exact = a.astype(np.float64) @ b.astype(np.float64).T
        # a k-term float32 dot product errs by at most ~k ulps of sum |a_t b_t|
        bound = (k + 1) * np.finfo(np.float32).eps * (np.abs(a).astype(np.float64) @ np.abs(b).T)
        error = np.abs(c - exact)
        assert np.all(np.isfinite(c)) and np.all(error <= bound), (m, n, k)


def test_scalar_gemm_is_the_k_ordered_float32_sum():
    """Without FMA each element is ((a0 b0 + a1 b1) + a2 b2) + ... rounded at each step."""
    rng = np.random.default_rng(8)
    for m, n, k in [(1, 1, 1), (5, 33, 13), (13, 97, 5), (33, 5, 131)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32)
        acc = np.zeros((m, n), np.float32)
        for t in range(k):
            acc = acc + a[:, t : t + 1] * b[None, :, t]
        assert np.array_equal(_core._gemm("scalar", a, b), acc)


@pytest.mark.parametrize("level", SIMD_LEVELS)
def test_gemm_does_not_depend_on_the_split(level):
    """kernels.h: every element is the same whatever m, n and the tiling."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((131, 97)).astype(np.float32)
    b = rng.standard_normal((97, 97)).astype(np.float32)
    full = _core._gemm(level, a, b)
    for lo, hi in [(0, 1), (3, 16), (13, 131), (100, 101)]:
        assert np.array_equal(_core._gemm(level, a[lo:hi], b), full[lo:hi])
        assert np.array_equal(_core._gemm(level, a, b[lo:hi]), full[:, lo:hi])


def test_gemm_rejects_mismatched_inner_dimensions():
    with pytest.raises(ValueError, match="must share k"):
        _core._gemm("scalar", np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float32))


def test_xxh64_known_values():
    # reference values from the xxhash package (4.1.0): xxhash.xxh64_intdigest(data)
    assert _core.xxh64(b"") == 0xEF46DB3751D8E999
    assert _core.xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert _core.xxh64(b"abc") == 0x44BC2CF5AD770999
    assert _core.xxh64(bytes(range(100))) == 0x6AC1E58032166597


def test_simd_level_switching():
    assert _core.best_simd_level() == SIMD_LEVELS[-1]
    for level in SIMD_LEVELS:
        _core.set_simd_level(level)
        assert _core.simd_level() == level


def test_bf16_kernel_switching():
    assert _core.best_bf16_kernel() == BF16_KERNELS[-1]
    # the default: AMX where it is there, else the float32 path (AVX512-BF16 only on request)
    default = "amx" if BF16_KERNELS[-1] == "amx" else "none"
    assert retro.bf16_kernel() == (os.environ.get("RETRO_BF16") or default)
    for kernel in BF16_KERNELS:
        retro.set_bf16_kernel(kernel)
        assert retro.bf16_kernel() == kernel
    for kernel in BF16_ORDER[len(BF16_KERNELS):]:
        with pytest.raises(ValueError, match=f"bf16 kernel {kernel} is not supported by this CPU"):
            retro.set_bf16_kernel(kernel)


def test_retro_bf16_forces_the_kernel_at_start():
    """RETRO_BF16 is read once, at the first use (here: a fresh interpreter)."""
    for kernel in BF16_KERNELS:
        env = {**os.environ, "RETRO_BF16": kernel}
        shown = subprocess.run([sys.executable, "-c", "import retro; print(retro.bf16_kernel())"],
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
        assert shown == kernel
