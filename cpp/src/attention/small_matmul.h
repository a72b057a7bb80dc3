// Dense products for the attention kernels, on right-hand sides packed in the panels of
// simd::Kernels::gemm_packed (kPanel columns each: packed[(p k + t) kPanel + j] = B(p kPanel + j, t)
// for C = A . B^T). float runs on the SIMD GEMM; double is plain loops over the same layout (it
// serves gradcheck, not speed). Leading dimensions are in elements.
#pragma once
#include <cstddef>

#include "retro/types.h"

namespace retro {

size_t packed_floats(idx_t n, idx_t k);  // elements of a packed (n columns, depth k) operand

// C (m, n) = A (m, k) . B^T with B (n, k) given packed.
void gemm_packed(idx_t m, idx_t n, idx_t k, const float* A, idx_t lda, const float* packed,
                 float* C, idx_t ldc);
void gemm_packed(idx_t m, idx_t n, idx_t k, const double* A, idx_t lda, const double* packed,
                 double* C, idx_t ldc);

// At (n, m) = A (m, n)^T, in cache-sized tiles.
template <typename A>
void transpose(idx_t m, idx_t n, const A* a, idx_t lda, A* at) {
  constexpr idx_t kTile = 16;
  for (idx_t i0 = 0; i0 < m; i0 += kTile)
    for (idx_t j0 = 0; j0 < n; j0 += kTile)
      for (idx_t i = i0; i < (i0 + kTile < m ? i0 + kTile : m); ++i)
        for (idx_t j = j0; j < (j0 + kTile < n ? j0 + kTile : n); ++j) at[j * m + i] = a[i * lda + j];
}

}  // namespace retro
