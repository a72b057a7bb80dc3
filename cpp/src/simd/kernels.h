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
constexpr int kScanBlock = 16;  // vectors per code block of the PQ scan (IvfPqIndex::kBlock)

struct Kernels {
  // C (m, n) = A (m, k, row stride lda) . B^T, B given packed (see kPanel); C row stride ldc.
  // Every C element is the k-ordered sum of products, whatever m, n and the tiling: results do not
  // depend on how callers split the work.
  void (*gemm_packed)(idx_t m, idx_t n, int k, const float* A, idx_t lda, const float* packed,
                      float* C, idx_t ldc);
  // out[j] = sum_t q[t] * ct[t * ksub + j] for j < ksub: one sub-quantizer's inner products.
  void (*inner_products_t)(int dsub, int ksub, const float* q, const float* ct, float* out);
  // out[i] = a[i] + alpha * b[i]
  void (*axpy)(size_t n, const float* a, float alpha, const float* b, float* out);
  // 8-bit PQ scan of nblocks code blocks (layout of IvfPqIndex): out[b * 16 + lane] =
  // bias + lut[0][code_0] + ... + lut[pq_m-1][code_{pq_m-1}], summed in m order in float
  // (the same order in every build, so all builds give bit-identical distances).
  void (*pq_scan8)(size_t nblocks, int pq_m, const uint8_t* codes, const float* lut, float bias,
                   float* out);
};

const Kernels& kernels();                    // for active_simd_level()
const Kernels& kernels_for(SimdLevel level);

size_t packed_size(idx_t n, int k);  // floats
void pack_panels(idx_t n, int k, const float* B, idx_t ldb, float* packed);

}  // namespace retro::simd
