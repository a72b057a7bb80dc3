#include "attention/small_matmul.h"

#include <algorithm>

#include "simd/kernels.h"

namespace retro {

size_t packed_floats(idx_t n, idx_t k) { return simd::packed_size(n, static_cast<int>(k)); }

void gemm_packed(idx_t m, idx_t n, idx_t k, const float* A, idx_t lda, const float* packed,
                 float* C, idx_t ldc) {
  simd::kernels().gemm_packed(m, n, static_cast<int>(k), A, lda, packed, C, ldc);
}

void gemm_packed(idx_t m, idx_t n, idx_t k, const double* A, idx_t lda, const double* packed,
                 double* C, idx_t ldc) {
  constexpr idx_t P = simd::kPanel;
  for (idx_t i = 0; i < m; ++i)
    for (idx_t j = 0; j < n; ++j) {
      const double* column = packed + (j / P) * k * P + j % P;
      double acc = 0.0;
      for (idx_t t = 0; t < k; ++t) acc += A[i * lda + t] * column[t * P];
      C[i * ldc + j] = acc;
    }
}

}  // namespace retro
