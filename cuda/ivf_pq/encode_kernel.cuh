// PQ encoding on the GPU (the add() path of retro/ivf_pq_cuda.h): one block per (128 vectors,
// sub-quantizer m). The block stages the m-th codebook (transposed, (dsub, 256)), its squared norms
// and the 128 residual slices in shared memory; each thread then picks, for its vector, the
// centroid j minimising ||p_mj||^2 - 2<r_m, p_mj> (the CPU encoder's GEMM form; the smallest j on
// ties).
#pragma once
#include <cstdint>

#include "retro/ivf_pq_cuda.h"

namespace retro::cuda::ivfpq {

constexpr int kEncodeVectors = 128;  // threads and vectors per block
constexpr int kEncodeKsub = 256;

// Shared memory of encode_kernel: codebook (dsub, 256), norms (256), residuals (128, dsub + 1).
__host__ __device__ inline size_t encode_shared_bytes(int dsub) {
  return (size_t(dsub) * kEncodeKsub + kEncodeKsub + size_t(kEncodeVectors) * (dsub + 1)) * 4;
}

struct EncodeArgs {
  IvfPqDeviceIndex index;
  idx_t n;
  const float* x;        // (n, d)
  const idx_t* list_of;  // (n,)
  uint8_t* codes;        // (n, pq_m)
};

__global__ void __launch_bounds__(kEncodeVectors) encode_kernel(EncodeArgs a) {
  extern __shared__ __align__(16) float shared[];
  const IvfPqDeviceIndex& ix = a.index;
  const int dsub = ix.d / ix.pq_m, m = blockIdx.y;
  const int row = dsub + 1;  // odd stride: threads reading their own residual hit distinct banks
  float* book = shared;                       // (dsub, 256)
  float* norms = book + dsub * kEncodeKsub;   // (256,)
  float* residuals = norms + kEncodeKsub;     // (128, dsub + 1)
  const float* book_src = ix.pq_centroids_t + size_t(m) * dsub * kEncodeKsub;
  for (int e = threadIdx.x; e < dsub * kEncodeKsub; e += kEncodeVectors) book[e] = book_src[e];
  const idx_t first = idx_t(blockIdx.x) * kEncodeVectors;
  for (int e = threadIdx.x; e < kEncodeVectors * dsub; e += kEncodeVectors) {
    const int v = e / dsub, t = e % dsub;
    const idx_t i = first + v;
    if (i >= a.n) continue;
    const size_t col = size_t(m) * dsub + t;
    residuals[v * row + t] =
        a.x[i * ix.d + col] - ix.coarse_centroids[a.list_of[i] * ix.d + col];
  }
  __syncthreads();
  for (int j = threadIdx.x; j < kEncodeKsub; j += kEncodeVectors) {
    float s = 0.0f;
    for (int t = 0; t < dsub; ++t) s += book[t * kEncodeKsub + j] * book[t * kEncodeKsub + j];
    norms[j] = s;
  }
  __syncthreads();
  const idx_t i = first + threadIdx.x;
  if (i >= a.n) return;
  const float* r = residuals + threadIdx.x * row;
  float best = __int_as_float(0x7f800000);
  int best_j = 0;
  for (int j = 0; j < kEncodeKsub; ++j) {
    float dot = 0.0f;
    for (int t = 0; t < dsub; ++t) dot += r[t] * book[t * kEncodeKsub + j];
    const float dist = norms[j] - 2.0f * dot;
    if (dist < best) {
      best = dist;
      best_j = j;
    }
  }
  a.codes[i * ix.pq_m + m] = static_cast<uint8_t>(best_j);
}

}  // namespace retro::cuda::ivfpq
