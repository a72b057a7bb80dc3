// The bfloat16 products of bf16_matmul.h. Built with the AVX-512, AVX512-BF16 and AMX flags
// (CMakeLists.txt), so nothing here may run before the dispatch (simd/dispatch.cpp) has found
// those features; this file keeps to its own helpers so no shared inline code picks up the flags.
#include "attention/bf16_matmul.h"

#include <cstring>

#if defined(RETRO_HAVE_X86_KERNELS)
#include <immintrin.h>
#else
#include "retro/error.h"
#endif

namespace retro::bf16 {
namespace {

constexpr idx_t kTile = 16;   // rows of an AMX tile, columns of a packed panel
constexpr idx_t kDepth = 32;  // bfloat16 values in one 64-byte tile row

idx_t round_up(idx_t x, idx_t to) { return (x + to - 1) / to * to; }

}  // namespace

idx_t padded_rows(idx_t m) { return round_up(m, kTile); }
idx_t padded_depth(idx_t k) { return round_up(k, kDepth); }
size_t packed_size(idx_t n, idx_t k) {
  return static_cast<size_t>(padded_rows(n) * padded_depth(k));
}

#if defined(RETRO_HAVE_X86_KERNELS)
// GCC 12's AVX-512 headers start some intrinsics from a self-initialized `__Y` (GCC bug 105593,
// fixed in 13): a false "used uninitialized" at every inlined use.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace {

// Masks of the first `count` lanes (none for count <= 0).
__mmask8 first8(idx_t count) { return count >= 8 ? 0xff : count <= 0 ? 0 : (1u << count) - 1; }
__mmask16 first16(idx_t count) {
  return count >= 16 ? 0xffff : count <= 0 ? 0 : (1u << count) - 1;
}
__mmask32 first32(idx_t count) {
  return count >= 32 ? 0xffffffffu : count <= 0 ? 0 : (1u << count) - 1;
}

// vpermt2w indices that interleave 16 columns of two rows (lanes 2 j and 2 j + 1 take column j of
// the first and of the second): `low` for columns 0-15 of a 32-column load, `high` for 16-31.
struct PairIndex {
  uint16_t low[32], high[32];
};
constexpr PairIndex make_pair_index() {
  PairIndex index{};
  for (int lane = 0; lane < 32; ++lane) {
    index.low[lane] = static_cast<uint16_t>(lane / 2 + 32 * (lane % 2));
    index.high[lane] = static_cast<uint16_t>(index.low[lane] + 16);
  }
  return index;
}
constexpr PairIndex kPairIndex = make_pair_index();

// The inverse: vpermt2w indices that take the even (first of each pair) or odd 16-bit lanes of two
// vectors, 16 from each.
struct Deinterleave {
  uint16_t even[32], odd[32];
};
constexpr Deinterleave make_deinterleave() {
  Deinterleave index{};
  for (int lane = 0; lane < 32; ++lane) {
    index.even[lane] = static_cast<uint16_t>(2 * lane);
    index.odd[lane] = static_cast<uint16_t>(2 * lane + 1);
  }
  return index;
}
constexpr Deinterleave kDeinterleave = make_deinterleave();

// Column c of 16 rows (at `first` + row_offsets, in bfloat16 elements) in the low half of 32-bit
// lanes, read alone (its right neighbour may lie past the end of the matrix).
__m512i gather_column(__mmask16 rows, __m512i row_offsets, const bfloat16* first) {
  alignas(64) int32_t lanes[16] = {};
  alignas(64) int32_t offsets[16];
  _mm512_store_si512(offsets, row_offsets);
  for (int r = 0; r < 16; ++r)
    if ((rows >> r) & 1) lanes[r] = first[offsets[r]].bits;
  return _mm512_load_si512(lanes);
}

// The tile registers: 0-3 accumulate C (row tile i, column tile j in 2 i + j), 4-5 hold A and 6-7
// hold B, each 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void load_tile_config() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = kTile;
  }
  _tile_loadconfig(&config);
}

// C (16 or 32 rows, 16 or 32 columns) = A . the one or two panels from `panel` on.
template <bool TwoRows, bool TwoCols>
void amx_block(idx_t depth, const bfloat16* A, idx_t lda, const bfloat16* panel, idx_t panel_size,
               float* C, idx_t ldc) {
  const long a_stride = static_cast<long>(lda * sizeof(bfloat16));
  const long c_stride = static_cast<long>(ldc * sizeof(float));
  _tile_zero(0);
  if constexpr (TwoCols) _tile_zero(1);
  if constexpr (TwoRows) _tile_zero(2);
  if constexpr (TwoRows && TwoCols) _tile_zero(3);
  for (idx_t t = 0; t < depth; t += kDepth) {
    _tile_loadd(4, A + t, a_stride);
    if constexpr (TwoRows) _tile_loadd(5, A + kTile * lda + t, a_stride);
    _tile_loadd(6, panel + t * kTile, 64);  // t / 2 pairs of 32 values
    if constexpr (TwoCols) _tile_loadd(7, panel + panel_size + t * kTile, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (TwoCols) _tile_dpbf16ps(1, 4, 7);
    if constexpr (TwoRows) _tile_dpbf16ps(2, 5, 6);
    if constexpr (TwoRows && TwoCols) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, c_stride);
  if constexpr (TwoCols) _tile_stored(1, C + kTile, c_stride);
  if constexpr (TwoRows) _tile_stored(2, C + kTile * ldc, c_stride);
  if constexpr (TwoRows && TwoCols) _tile_stored(3, C + kTile * ldc + kTile, c_stride);
}

void amx_gemm(idx_t m, idx_t n, idx_t k, const bfloat16* A, idx_t lda, const bfloat16* packed,
              float* C, idx_t ldc) {
  // The tile intrinsics are asm without a memory clobber: fence the buffers around them.
  asm volatile("" ::: "memory");
  load_tile_config();
  const idx_t depth = padded_depth(k), panel_size = depth * kTile, panels = padded_rows(n) / kTile;
  for (idx_t i = 0; i < m; i += 2 * kTile) {
    const bool two_rows = i + kTile < m;
    for (idx_t p = 0; p < panels; p += 2) {
      const bool two_cols = p + 1 < panels;
      const bfloat16* panel = packed + p * panel_size;
      float* c = C + i * ldc + p * kTile;
      const bfloat16* a = A + i * lda;
      if (two_rows && two_cols) amx_block<true, true>(depth, a, lda, panel, panel_size, c, ldc);
      else if (two_rows) amx_block<true, false>(depth, a, lda, panel, panel_size, c, ldc);
      else if (two_cols) amx_block<false, true>(depth, a, lda, panel, panel_size, c, ldc);
      else amx_block<false, false>(depth, a, lda, panel, panel_size, c, ldc);
    }
  }
  _tile_release();
  asm volatile("" ::: "memory");
}

// C (8 rows, 16 Panels columns) = A . the panels from `panel` on, one vdpbf16ps per row, panel and
// pair of depth.
template <int Panels>
void dot_block(idx_t pairs, const bfloat16* A, idx_t lda, const bfloat16* panel,
               idx_t panel_size, float* C, idx_t ldc) {
  constexpr int kRows = 8;
  __m512 acc[kRows][Panels];
  for (auto& row : acc)
    for (__m512& a : row) a = _mm512_setzero_ps();
  for (idx_t p = 0; p < pairs; ++p) {
    __m512bh b[Panels];
    for (int j = 0; j < Panels; ++j)
      b[j] = (__m512bh)_mm512_loadu_si512(panel + j * panel_size + p * 2 * kTile);
    for (int i = 0; i < kRows; ++i) {
      int32_t pair;
      std::memcpy(&pair, A + i * lda + 2 * p, sizeof(pair));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < Panels; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, b[j]);
    }
  }
  for (int i = 0; i < kRows; ++i)
    for (int j = 0; j < Panels; ++j) _mm512_storeu_ps(C + i * ldc + j * kTile, acc[i][j]);
}

void dot_gemm(idx_t m, idx_t n, idx_t k, const bfloat16* A, idx_t lda, const bfloat16* packed,
              float* C, idx_t ldc) {
  const idx_t pairs = (k + 1) / 2, panel_size = padded_depth(k) * kTile;
  const idx_t rows = padded_rows(m), panels = padded_rows(n) / kTile;
  for (idx_t i = 0; i < rows; i += 8)
    for (idx_t p = 0; p < panels; p += 2) {
      const bfloat16* panel = packed + p * panel_size;
      float* c = C + i * ldc + p * kTile;
      if (p + 1 < panels) dot_block<2>(pairs, A + i * lda, lda, panel, panel_size, c, ldc);
      else dot_block<1>(pairs, A + i * lda, lda, panel, panel_size, c, ldc);
    }
}

}  // namespace

void pack_rows(idx_t n, idx_t k, const bfloat16* const* rows, bfloat16* packed) {
  const idx_t pairs = padded_depth(k) / 2, whole_pairs = k / 2;
  const __m512i next_pair = _mm512_set1_epi64(2 * sizeof(bfloat16));
  for (idx_t c0 = 0; c0 < n; c0 += kTile) {
    bfloat16* panel = packed + (c0 / kTile) * pairs * 2 * kTile;
    const idx_t cols = n - c0 < kTile ? n - c0 : kTile;
    const __mmask8 low = first8(cols), high = first8(cols - 8);
    // The addresses of the next pair of each row, gathered 8 rows at a time.
    __m512i low_at = _mm512_maskz_loadu_epi64(low, rows + c0);
    __m512i high_at = _mm512_maskz_loadu_epi64(high, rows + c0 + 8);
    idx_t p = 0;
    for (; p < whole_pairs; ++p) {
      const __m256i a =
          _mm512_mask_i64gather_epi32(_mm256_setzero_si256(), low, low_at, nullptr, 1);
      const __m256i b =
          _mm512_mask_i64gather_epi32(_mm256_setzero_si256(), high, high_at, nullptr, 1);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + p * 2 * kTile), a);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + p * 2 * kTile + kTile), b);
      low_at = _mm512_add_epi64(low_at, next_pair);
      high_at = _mm512_add_epi64(high_at, next_pair);
    }
    for (; p < pairs; ++p) _mm512_storeu_si512(panel + p * 2 * kTile, _mm512_setzero_si512());
    if (k % 2 == 1)  // the last value of odd rows alone: its pair would read past the row's end
      for (idx_t j = 0; j < cols; ++j) panel[whole_pairs * 2 * kTile + 2 * j] = rows[c0 + j][k - 1];
  }
}

void pack_depth(idx_t k, idx_t n, const bfloat16* const* rows, bfloat16* packed) {
  const idx_t pairs = padded_depth(k) / 2, panels = padded_rows(n) / kTile;
  const __m512i low_index = _mm512_loadu_si512(kPairIndex.low);
  const __m512i high_index = _mm512_loadu_si512(kPairIndex.high);
  for (idx_t p = 0; p < pairs; ++p) {
    const bfloat16* first = 2 * p < k ? rows[2 * p] : nullptr;
    const bfloat16* second = 2 * p + 1 < k ? rows[2 * p + 1] : nullptr;
    for (idx_t c0 = 0; c0 < n; c0 += 2 * kTile) {
      const __mmask32 mask = first32(n - c0);
      const __m512i a = first ? _mm512_maskz_loadu_epi16(mask, first + c0) : _mm512_setzero_si512();
      const __m512i b =
          second ? _mm512_maskz_loadu_epi16(mask, second + c0) : _mm512_setzero_si512();
      bfloat16* out = packed + ((c0 / kTile) * pairs + p) * 2 * kTile;
      _mm512_storeu_si512(out, _mm512_permutex2var_epi16(a, low_index, b));
      if (c0 / kTile + 1 < panels)
        _mm512_storeu_si512(out + pairs * 2 * kTile, _mm512_permutex2var_epi16(a, high_index, b));
    }
  }
}

void gemm(Bf16Kernel kernel, idx_t m, idx_t n, idx_t k, const bfloat16* A, idx_t lda,
          const bfloat16* packed, float* C, idx_t ldc) {
  if (kernel == Bf16Kernel::Amx)
    amx_gemm(m, n, k, A, lda, packed, C, ldc);
  else  // Avx512Bf16 (the callers never pass None)
    dot_gemm(m, n, k, A, lda, packed, C, ldc);
}

void copy_row(idx_t n, idx_t padded, const bfloat16* src, bfloat16* dst) {
  for (idx_t j = 0; j < padded; j += 2 * kTile)
    _mm512_storeu_si512(dst + j, _mm512_maskz_loadu_epi16(first32(n - j), src + j));
}

void narrow_row(idx_t n, idx_t padded, const float* src, float factor, bfloat16* dst) {
  const __m512 f = _mm512_set1_ps(factor);
  for (idx_t j = 0; j < padded; j += 2 * kTile) {
    const __m512 low = _mm512_mul_ps(f, _mm512_maskz_loadu_ps(first16(n - j), src + j));
    const __m512 high =
        _mm512_mul_ps(f, _mm512_maskz_loadu_ps(first16(n - j - kTile), src + j + kTile));
    _mm512_mask_storeu_epi16(dst + j, first32(padded - j),
                             (__m512i)_mm512_cvtne2ps_pbh(high, low));
  }
}

namespace {

// exp(x) for x <= 88 as 2^k e^r with k = round(x / ln 2) and |r| <= ln 2 / 2: the degree-6 Taylor
// polynomial of e^r (truncation error < 1.3e-7 relative) scaled by vscalefps, which needs no
// exponent bit tricks and gives 0 for large negative k. Below -88 the result is 0 or denormal.
__m512 exp_approx(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - k ln 2 with ln 2 split in two so that k * high is exact
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

// x (32 floats in two vectors) as hi = bfloat16(x) at `hi` and lo = bfloat16(x - hi) at `lo`.
void store_split(__mmask32 lanes, const __m512* x, bfloat16* hi, bfloat16* lo) {
  const __m512bh rounded = _mm512_cvtne2ps_pbh(x[1], x[0]);
  // widening bfloat16 is a 16-bit shift left: the low and high 16 lanes of `rounded`
  const __m512i bits = (__m512i)rounded;
  const __m512 low = _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm512_castsi512_si256(bits)), 16));
  const __m512 high = _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(bits, 1)), 16));
  _mm512_mask_storeu_epi16(hi, lanes, bits);
  _mm512_mask_storeu_epi16(lo, lanes, (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(x[1], high),
                                                                   _mm512_sub_ps(x[0], low)));
}

}  // namespace

float exp_row(idx_t n, idx_t padded, const float* scores, float scale, bfloat16* probs,
              float* shift) {
  __m512 top = _mm512_set1_ps(-__builtin_inff());
  for (idx_t j = 0; j < n; j += kTile)
    top = _mm512_max_ps(top, _mm512_mask_loadu_ps(top, first16(n - j), scores + j));
  *shift = scale * _mm512_reduce_max_ps(top);
  const __m512 s = _mm512_set1_ps(scale), minus_shift = _mm512_set1_ps(-*shift);
  __m512 sum = _mm512_setzero_ps();
  for (idx_t j = 0; j < padded; j += 2 * kTile) {
    const __mmask16 low_lanes = first16(n - j), high_lanes = first16(n - j - kTile);
    const __m512 low = _mm512_maskz_mov_ps(
        low_lanes, exp_approx(_mm512_fmadd_ps(
                       s, _mm512_maskz_loadu_ps(low_lanes, scores + j), minus_shift)));
    const __m512 high = _mm512_maskz_mov_ps(
        high_lanes, exp_approx(_mm512_fmadd_ps(
                        s, _mm512_maskz_loadu_ps(high_lanes, scores + j + kTile), minus_shift)));
    sum = _mm512_add_ps(sum, _mm512_add_ps(low, high));
    _mm512_mask_storeu_epi16(probs + j, first32(padded - j),
                             (__m512i)_mm512_cvtne2ps_pbh(high, low));
  }
  return _mm512_reduce_add_ps(sum);
}

void softmax_gradient_row(idx_t n, idx_t padded, const float* scores, const float* dprobs,
                          const float* lse, const float* dots, float scale, bfloat16* probs,
                          bfloat16* dscores) {
  const __m512 s = _mm512_set1_ps(scale);
  for (idx_t j = 0; j < padded; j += 2 * kTile) {
    __m512 p[2], ds[2];
    for (int half = 0; half < 2; ++half) {
      const idx_t at = j + half * kTile;
      const __mmask16 lanes = first16(n - at);
      const __m512 x = _mm512_fmsub_ps(s, _mm512_maskz_loadu_ps(lanes, scores + at),
                                       _mm512_maskz_loadu_ps(lanes, lse + at));
      p[half] = _mm512_maskz_mov_ps(lanes, exp_approx(x));
      const __m512 centred = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, dprobs + at),
                                           _mm512_maskz_loadu_ps(lanes, dots + at));
      ds[half] = _mm512_mul_ps(_mm512_mul_ps(s, p[half]), centred);
    }
    const __mmask32 lanes = first32(padded - j);
    store_split(lanes, p, probs + j, probs + padded + j);
    store_split(lanes, ds, dscores + j, dscores + padded + j);
  }
}

float dot(idx_t n, const bfloat16* x, const bfloat16* y) {
  __m512 sum = _mm512_setzero_ps();
  for (idx_t j = 0; j < n; j += 2 * kTile) {
    const __mmask32 lanes = first32(n - j);
    sum = _mm512_dpbf16_ps(sum, (__m512bh)_mm512_maskz_loadu_epi16(lanes, x + j),
                           (__m512bh)_mm512_maskz_loadu_epi16(lanes, y + j));
  }
  return _mm512_reduce_add_ps(sum);
}

void transpose(idx_t rows, idx_t cols, const bfloat16* src, idx_t lds, bfloat16* dst, idx_t ldd,
               idx_t padded) {
  // 32 source rows at a time: one 32-bit gather per 16 rows fetches two adjacent columns, split
  // into two destination rows by vpermt2w (even 16-bit lanes, then odd).
  const __m512i even = _mm512_loadu_si512(kDeinterleave.even);
  const __m512i odd = _mm512_loadu_si512(kDeinterleave.odd);
  const __m512i row_offsets = _mm512_mullo_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
      _mm512_set1_epi32(static_cast<int>(lds)));
  for (idx_t i0 = 0; i0 < padded; i0 += 2 * kTile) {
    const __mmask16 low = first16(rows - i0), high = first16(rows - i0 - kTile);
    const bfloat16* block = src + i0 * lds;
    for (idx_t c = 0; c < cols; c += 2) {
      // the pair (c, c + 1) of each row; past the last column only c is read
      const bool single = c + 1 == cols;
      __m512i a, b;
      if (single) {
        a = gather_column(low, row_offsets, block + c);
        b = gather_column(high, row_offsets, block + kTile * lds + c);
      } else {
        a = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), low, row_offsets, block + c, 2);
        b = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), high, row_offsets,
                                        block + kTile * lds + c, 2);
      }
      const __mmask32 lanes = first32(padded - i0);
      _mm512_mask_storeu_epi16(dst + c * ldd + i0, lanes, _mm512_permutex2var_epi16(a, even, b));
      if (!single)
        _mm512_mask_storeu_epi16(dst + (c + 1) * ldd + i0, lanes,
                                 _mm512_permutex2var_epi16(a, odd, b));
    }
  }
}

#else  // no x86 kernels: best_bf16_kernel() is None, so nothing calls these

void pack_rows(idx_t, idx_t, const bfloat16* const*, bfloat16*) {
  RETRO_THROW("this build has no bf16 kernels");
}
void pack_depth(idx_t, idx_t, const bfloat16* const*, bfloat16*) {
  RETRO_THROW("this build has no bf16 kernels");
}
void gemm(Bf16Kernel, idx_t, idx_t, idx_t, const bfloat16*, idx_t, const bfloat16*, float*, idx_t) {
  RETRO_THROW("this build has no bf16 kernels");
}
void copy_row(idx_t, idx_t, const bfloat16*, bfloat16*) {
  RETRO_THROW("this build has no bf16 kernels");
}
void narrow_row(idx_t, idx_t, const float*, float, bfloat16*) {
  RETRO_THROW("this build has no bf16 kernels");
}
float exp_row(idx_t, idx_t, const float*, float, bfloat16*, float*) {
  RETRO_THROW("this build has no bf16 kernels");
}
void softmax_gradient_row(idx_t, idx_t, const float*, const float*, const float*, const float*,
                          float, bfloat16*, bfloat16*) {
  RETRO_THROW("this build has no bf16 kernels");
}
float dot(idx_t, const bfloat16*, const bfloat16*) {
  RETRO_THROW("this build has no bf16 kernels");
}
void transpose(idx_t, idx_t, const bfloat16*, idx_t, bfloat16*, idx_t, idx_t) {
  RETRO_THROW("this build has no bf16 kernels");
}

#endif

}  // namespace retro::bf16
