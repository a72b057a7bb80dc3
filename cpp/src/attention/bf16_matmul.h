// bfloat16 products with float32 accumulation for the attention kernels, on AMX tiles or
// AVX512-BF16 dot products (retro/simd.h: Bf16Kernel; call only with a kernel the CPU has).
//
// C = A . B^T with A (m, k) in bfloat16 rows and B (n, k) packed in pairs of depth, the operand
// layout of both AMX's tdpbf16ps and vdpbf16ps: panels of 16 columns,
//   packed[((c / 16) * depth_pairs + t / 2) * 32 + (c % 16) * 2 + t % 2] = B(c, t),
// zero past n (to a multiple of 16 columns) and past k (to padded_depth(k)).
// Buffer contract of gemm (the kernels work in whole 16 x 16 tiles, so the callers pad):
//   A has padded_rows(m) readable rows (rows past m are don't-care) of at least padded_depth(k)
//     elements, zero from k on;
//   C has padded_rows(m) rows of ldc >= padded_rows(n) floats; all of them are written.
#pragma once
#include <cstddef>
#include <cstdint>

#include "attention/bfloat16.h"
#include "retro/simd.h"
#include "retro/types.h"

namespace retro::bf16 {

idx_t padded_rows(idx_t m);   // m rounded up to 16: rows of a tile, columns of a panel
idx_t padded_depth(idx_t k);  // k rounded up to 32: the depth of one tile row
size_t packed_size(idx_t n, idx_t k);  // bfloat16 elements of a packed (n, k) operand

// Packs B (n, k) given as its n rows (k values each, by pointer): the operand of C = A . B^T.
void pack_rows(idx_t n, idx_t k, const bfloat16* const* rows, bfloat16* packed);
// Packs B^T for C = A . B, with B (k, n) given as its k rows (n values each, by pointer).
void pack_depth(idx_t k, idx_t n, const bfloat16* const* rows, bfloat16* packed);

// C (m, n) = A (m, k) . B^T, B packed; see the buffer contract above.
void gemm(Bf16Kernel kernel, idx_t m, idx_t n, idx_t k, const bfloat16* A, idx_t lda,
          const bfloat16* packed, float* C, idx_t ldc);

// The conversions between the products, on rows of n values padded with zeros up to `padded`:
// dst[j] = src[j] for j < n (an operand row from a tensor row).
void copy_row(idx_t n, idx_t padded, const bfloat16* src, bfloat16* dst);
// dst[j] = bfloat16(factor * src[j]), rounded to nearest even (a result row to a tensor row).
void narrow_row(idx_t n, idx_t padded, const float* src, float factor, bfloat16* dst);
// The softmax numerators of a row of scores as an operand row of P V: with shift = scale * max_j
// scores[j], probs[j] = bfloat16(exp(scale * scores[j] - shift)). Returns the float32 sum of the
// unrounded exponentials and sets *shift (n >= 1 finite scores; exp relative error < 2e-7).
float exp_row(idx_t n, idx_t padded, const float* scores, float scale, bfloat16* probs,
              float* shift);
// The backward's row of key j, over the n queries i (transposed scores S^T and dP^T):
// p = exp(scale * scores[i] - lse[i]) and ds = scale * p * (dprobs[i] - dots[i]), each written as
// two bfloat16 terms, x = hi + lo with hi = bfloat16(x), lo = bfloat16(x - hi): hi at [i] and lo
// at [padded + i], zero from n to padded in both halves. (One bfloat16 rounding of dS before the
// products, as PyTorch does, costs up to 5x the error of float32 on small cases.)
void softmax_gradient_row(idx_t n, idx_t padded, const float* scores, const float* dprobs,
                          const float* lse, const float* dots, float scale, bfloat16* probs,
                          bfloat16* dscores);
// sum_j x[j] y[j] in float32.
float dot(idx_t n, const bfloat16* x, const bfloat16* y);
// dst (cols rows of stride ldd) = src (rows, cols; stride lds)^T, each dst row zero from `rows` to
// `padded` (<= ldd).
void transpose(idx_t rows, idx_t cols, const bfloat16* src, idx_t lds, bfloat16* dst, idx_t ldd,
               idx_t padded);

}  // namespace retro::bf16
