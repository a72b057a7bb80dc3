// The CPU kernels that have a scalar, an AVX2 and an AVX-512 build (kernels.inc compiled three
// times with different flags), and the table that picks one set at run time.
#pragma once
#include <cstddef>
#include <cstdint>

#include "retro/simd.h"
#include "retro/types.h"

namespace retro::simd {

// GEMM right-hand sides are packed once into panels of kPanel columns: panel p holds columns
// p*kPanel .. p*kPanel+kPanel-1 as packed[(p * k + t) * kPanel + j] (zero-padded past n).
constexpr int kPanel = 32;
constexpr int kScanBlock = 64;  // vectors per code block of the PQ scan (IvfPqIndex::kBlock)
constexpr int kFastScanBlock = 32;  // vectors per block of 4-bit codes (CodeLayout::kBlock4)
constexpr int kMaxScanQueries = 4;  // queries per pass of Kernels::pq_scan4_queries

struct Kernels {
  // C (m, n) = A (m, k, row stride lda) . B^T, B given packed (see kPanel); C row stride ldc.
  // Every C element is the k-ordered sum of products, whatever m, n and the tiling: results do not
  // depend on how callers split the work.
  void (*gemm_packed)(idx_t m, idx_t n, int k, const float* A, idx_t lda, const float* packed,
                      float* C, idx_t ldc);
  // The same product fused with a row-wise argmin, C never written: for each row i,
  // best[i] = min_j (column_bias[j] + alpha * C[i][j]) and best_index[i] = its j (the smallest j
  // on ties). column_bias has the packed width (+inf on padding columns).
  void (*gemm_argmin)(idx_t m, idx_t n, int k, const float* A, idx_t lda, const float* packed,
                      const float* column_bias, float alpha, float* best, idx_t* best_index);
  // out[i * ldo + j] = scale * sum_t q[i * ldq + t] * ct[t * ksub + j] for i < nq, j < ksub,
  // summed in t order: one sub-quantizer's rows of nq queries' look-up tables. Each row of ct is
  // loaded once for up to four queries: one query at a time, streaming ct from the cache bounds
  // the table's cost, not the multiply-adds.
  void (*inner_products_t)(int nq, int dsub, int ksub, const float* q, size_t ldq,
                           const float* ct, float scale, float* out, size_t ldo);
  // out[m][j] = base[m][j] + scale * sum_t c[m * dsub + t] * ct[(m * dsub + t) * 16 + j] for
  // j < 16, summed in t order: a list's 4-bit table from the query's (base) and the list's
  // centroid c (ct = the PQ centroids as (pq_m, dsub, 16)), all pq_m rows in one call.
  void (*add_inner_products16)(int pq_m, int dsub, const float* c, const float* ct, float scale,
                               const float* base, float* out);
  // Exact distances of the re-ranking: squared L2 and inner product of two d-vectors, summed in
  // four chains of 16 interleaved partial sums (the 16-blocks of the vectors round-robin over the
  // chains: four additions in flight), folded (0 + 1) + (2 + 3), the tail added to lanes 0, 1, ...,
  // then combined pairwise (lanes l and l + 8, then + 4, + 2, + 1): the same order in every build
  // (FMA builds round the products differently).
  float (*l2_distance)(int d, const float* x, const float* y);
  float (*inner_product)(int d, const float* x, const float* y);
  // out[j] = the float value of the IEEE half h[j] for j < n (exact: every level gives the same
  // floats; NaNs stay NaN): the float16 rows of a re-ranking.
  void (*widen_halves)(int n, const uint16_t* h, float* out);
  // Turns a row of inner products into internal distances, in place:
  // ip[j] = base + norms[j] - 2 ip[j] (squared L2; base = ||x||^2) or -ip[j] (norms == nullptr).
  void (*distances_from_inner_products)(size_t n, float base, const float* norms, float* ip);

  // 8-bit PQ scan of nblocks code blocks (layout of IvfPqIndex): out[i] =
  // (bias + terms[i]) + lut[0][code_0] + ... + lut[pq_m-1][code_{pq_m-1}] for i = b * 16 + lane,
  // summed in this order in float (the same in every build, so all builds give bit-identical
  // distances); terms may be null (then 0 is not added: out starts from bias).
  void (*pq_scan8)(size_t nblocks, int pq_m, const uint8_t* codes, const float* lut, float bias,
                   const float* terms, float* out);

  // low[m], high[m] = min and max of row m of a (rows, width) table; width is a multiple of 16.
  void (*row_ranges)(int rows, int width, const float* table, float* low, float* high);
  // out[m][j] = round_half_up((table[m][j] - low[m]) * inverse_step), capped at max_code: the
  // 8-bit tables of pq_filter8 and pq_scan4 (table[m][j] >= low[m]); width as row_ranges.
  void (*quantize8)(int rows, int width, const float* table, const float* low, float inverse_step,
                    int max_code, uint8_t* out);
  // The same scan on a quantized table, as a filter (nullptr where the level lacks it: it needs
  // AVX-512 VBMI). For the first n vectors of the blocked codes, with
  //   approx[i] = (bias + terms[i]) + (offset + step * sum_m qlut[m][code_m]),
  // writes the indices i with approx[i] <= limit + term_slack * |terms[i]| to survivors, in
  // increasing order, and returns their count. qlut is (pq_m, 256) bytes and the byte sums must
  // fit 16 bits (pq_m <= 257); survivors holds n rounded up to kScanBlock entries.
  size_t (*pq_filter8)(idx_t n, int pq_m, const uint8_t* codes, const uint8_t* qlut, float bias,
                       const float* terms, float offset, float step, float limit,
                       float term_slack, uint32_t* survivors);

  // The 4-bit fast-scan (layout of CodeLayout, pq_bits = 4): for the first n vectors of blocked
  // codes, sums[i] = sum_m qlut[m][code_m(i)] in exact 16-bit integer arithmetic for every i < n
  // rounded up to kFastScanBlock, and the indices i < n with sums[i] <= limit written to
  // survivors in increasing order; returns their count. qlut is (pq_m rounded up to even, 16)
  // bytes, the padding row zero, with sum_m max_j qlut[m][j] <= 65535 (no overflow). Every level
  // returns the same integers: the scalar build is the reference.
  size_t (*pq_scan4)(idx_t n, int pq_m, const uint8_t* codes, const uint8_t* qlut, uint16_t limit,
                     uint16_t* sums, uint32_t* survivors);
  // The same scan for nq (1 .. kMaxScanQueries) queries at once, each block of codes loaded once:
  // query j's table qluts[j] and limit limits[j] give its sums at sums + j * stride and its
  // survivors at survivors + j * stride, counts[j] of them; the same integers as pq_scan4.
  void (*pq_scan4_queries)(idx_t n, int pq_m, const uint8_t* codes, int nq,
                           const uint8_t* const* qluts, const uint16_t* limits, uint16_t* sums,
                           uint32_t* survivors, size_t stride, size_t* counts);

  // out[j] = exp(scale * x[j] - shift) for j < n (relative error < 1e-6 for arguments in
  // [-87, 88]; clamped outside); returns the sum of out. The softmax of the attention kernels.
  float (*exp_sum)(size_t n, const float* x, float scale, float shift, float* out);
  // In place: row = softmax(scale * row) (n >= 1 finite values); returns the log of the
  // denominator, log sum_j exp(scale * row[j]).
  float (*softmax)(size_t n, float* row, float scale);
  // packed[(p k + t) kPanel + j] = rows[p kPanel + j][t] for the n rows (k floats each) given by
  // pointer, zero past n: the right-hand side of gemm_packed, transposed from scattered rows.
  void (*pack_columns)(idx_t n, int k, const float* const* rows, float* packed);
};

const Kernels& kernels();                    // for active_simd_level()
const Kernels& kernels_for(SimdLevel level);

size_t packed_size(idx_t n, int k);  // floats
void pack_panels(idx_t n, int k, const float* B, idx_t ldb, float* packed);

}  // namespace retro::simd
