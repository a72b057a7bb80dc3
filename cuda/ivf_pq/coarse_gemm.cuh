// The coarse step of IVF-PQ on the GPU (and the assignment step of k-means): one CUTLASS GEMM of
// the queries against the centroids, its epilogue adding the centroids' squared norms (a C operand
// with row stride 0 broadcasts them down the columns):
//   out (nq, k) = ||c||^2 - 2 <q, c>   (L2)   or   -<q, c>   (inner product)
// float32 SIMT: the probes chosen must be the CPU's up to rounding, which tf32 would not keep.
// The CUTLASS instantiation has its own file (coarse_gemm.cu): the heaviest one to compile.
#pragma once
#include <cuda_runtime.h>

#include "retro/ivf_pq_cuda.h"

namespace retro::cuda::ivfpq {

// x (nq, d) against centroids (k, d) with squared norms (k,) (read for L2 only) -> out (nq, k).
void coarse_gemm(Metric metric, idx_t nq, int d, const float* x, idx_t k, const float* centroids,
                 const float* norms, float* out, cudaStream_t stream);

}  // namespace retro::cuda::ivfpq
