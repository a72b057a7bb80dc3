#include "attention/small_matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "simd/kernels.h"

namespace retro {
namespace {

using simd::kPanel;

float* scratch(std::vector<float>& buffer, size_t size) {
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
}

// B (k, n) packed as the panels of its transpose: packed[(p k + t) kPanel + j] = B[t][p kPanel + j]
// (zero past n). Each panel row is a contiguous slice of a row of B.
void pack_depth_major(idx_t n, idx_t k, const float* B, idx_t ldb, float* packed) {
  for (idx_t p = 0; p * kPanel < n; ++p) {
    const idx_t cols = std::min<idx_t>(kPanel, n - p * kPanel);
    float* panel = packed + p * k * kPanel;
    for (idx_t t = 0; t < k; ++t) {
      std::memcpy(panel + t * kPanel, B + t * ldb + p * kPanel, cols * sizeof(float));
      std::fill(panel + t * kPanel + cols, panel + (t + 1) * kPanel, 0.0f);
    }
  }
}

thread_local std::vector<float> t_packed, t_transposed;

}  // namespace

void matmul_nt(idx_t m, idx_t n, idx_t k, const float* A, idx_t lda, const float* B, idx_t ldb,
               float* C, idx_t ldc) {
  float* packed = scratch(t_packed, simd::packed_size(n, static_cast<int>(k)));
  simd::pack_panels(n, static_cast<int>(k), B, ldb, packed);
  simd::kernels().gemm_packed(m, n, static_cast<int>(k), A, lda, packed, C, ldc);
}

void matmul_nn(idx_t m, idx_t n, idx_t k, const float* A, idx_t lda, const float* B, idx_t ldb,
               float* C, idx_t ldc) {
  float* packed = scratch(t_packed, simd::packed_size(n, static_cast<int>(k)));
  pack_depth_major(n, k, B, ldb, packed);
  simd::kernels().gemm_packed(m, n, static_cast<int>(k), A, lda, packed, C, ldc);
}

void matmul_tn(idx_t m, idx_t n, idx_t k, const float* A, idx_t lda, const float* B, idx_t ldb,
               float* C, idx_t ldc) {
  float* at = scratch(t_transposed, static_cast<size_t>(m) * k);
  constexpr idx_t kTile = 16;  // transposed in 16 x 16 tiles
  for (idx_t t0 = 0; t0 < k; t0 += kTile)
    for (idx_t i0 = 0; i0 < m; i0 += kTile)
      for (idx_t t = t0; t < std::min(k, t0 + kTile); ++t)
        for (idx_t i = i0; i < std::min(m, i0 + kTile); ++i) at[i * k + t] = A[t * lda + i];
  matmul_nn(m, n, k, at, k, B, ldb, C, ldc);
}

void matmul_nt(idx_t m, idx_t n, idx_t k, const double* A, idx_t lda, const double* B, idx_t ldb,
               double* C, idx_t ldc) {
  for (idx_t i = 0; i < m; ++i)
    for (idx_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (idx_t t = 0; t < k; ++t) acc += A[i * lda + t] * B[j * ldb + t];
      C[i * ldc + j] = acc;
    }
}

void matmul_nn(idx_t m, idx_t n, idx_t k, const double* A, idx_t lda, const double* B, idx_t ldb,
               double* C, idx_t ldc) {
  for (idx_t i = 0; i < m; ++i) {
    std::fill(C + i * ldc, C + i * ldc + n, 0.0);
    for (idx_t t = 0; t < k; ++t)
      for (idx_t j = 0; j < n; ++j) C[i * ldc + j] += A[i * lda + t] * B[t * ldb + j];
  }
}

void matmul_tn(idx_t m, idx_t n, idx_t k, const double* A, idx_t lda, const double* B, idx_t ldb,
               double* C, idx_t ldc) {
  for (idx_t i = 0; i < m; ++i) {
    std::fill(C + i * ldc, C + i * ldc + n, 0.0);
    for (idx_t t = 0; t < k; ++t)
      for (idx_t j = 0; j < n; ++j) C[i * ldc + j] += A[t * lda + i] * B[t * ldb + j];
  }
}

}  // namespace retro
