// Products of small dense row-major blocks, as the attention kernels need them. float runs on the
// SIMD GEMM (simd::Kernels::gemm_packed, B packed per call); double is plain loops (it serves
// gradcheck, not speed). Leading dimensions are in elements.
#pragma once
#include "retro/types.h"

namespace retro {

// C (m, n) = A (m, k) . B (n, k)^T
void matmul_nt(idx_t m, idx_t n, idx_t k, const float* A, idx_t lda, const float* B, idx_t ldb,
               float* C, idx_t ldc);
void matmul_nt(idx_t m, idx_t n, idx_t k, const double* A, idx_t lda, const double* B, idx_t ldb,
               double* C, idx_t ldc);

// C (m, n) = A (m, k) . B (k, n)
void matmul_nn(idx_t m, idx_t n, idx_t k, const float* A, idx_t lda, const float* B, idx_t ldb,
               float* C, idx_t ldc);
void matmul_nn(idx_t m, idx_t n, idx_t k, const double* A, idx_t lda, const double* B, idx_t ldb,
               double* C, idx_t ldc);

// C (m, n) = A (k, m)^T . B (k, n)
void matmul_tn(idx_t m, idx_t n, idx_t k, const float* A, idx_t lda, const float* B, idx_t ldb,
               float* C, idx_t ldc);
void matmul_tn(idx_t m, idx_t n, idx_t k, const double* A, idx_t lda, const double* B, idx_t ldb,
               double* C, idx_t ldc);

}  // namespace retro
