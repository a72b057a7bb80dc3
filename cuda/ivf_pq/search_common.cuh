// The kernels of an IVF-PQ search on the GPU (retro/ivf_pq_cuda.h; host side: cuda/ivf_pq.cu),
// after the coarse GEMM (ivf_pq/coarse_gemm.cu) has written coarse (nq, nlist) = ||c||^2 - 2<q, c>
// (L2) or -<q, c> (IP):
//   select_probes_kernel  one block per query: + ||q||^2 (L2), top-nprobe lists
//   scan_kernel           one block per (query, slice of its probes): the query's look-up table
//                         in shared memory, the slice's lists scanned warp per 64-vector block
//                         with 16-byte code loads, a fused BlockTopK; writes final results, or
//                         partial ones when a query's probes are split over several blocks
//                         (ivf_pq/scan_kernel.cuh; one table type per file: scan_f32.cu, _f16.cu)
//   merge_kernel          one block per query: top-k of its blocks' partial results
// This header holds what they share: sizes, arguments and block helpers.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "ivf_pq/block_top_k.cuh"
#include "retro/ivf_pq_cuda.h"

namespace retro::cuda::ivfpq {

constexpr int kThreads = 256;                     // every kernel here
constexpr int kWarps = kThreads / 32;
constexpr int kCodeBlock = 64;                    // vectors per block of codes (IvfPqIndex::kBlock)
constexpr int kScanRound = kWarps * kCodeBlock;   // pushes per round of the scan
constexpr int kKsub = 256;

// Sum over the threads of a block (every thread gets it); `scratch` holds kWarps floats.
__device__ inline float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Writes the first k entries of a finished BlockTopK: final results (labels -1 where missing,
// distances negated for inner product) or, with `partial`, the raw (distance, id) entries.
__device__ inline void write_top_k(const BlockTopK& top, bool partial, bool negate, float* dist_out,
                                   idx_t* ids_out) {
  for (int i = threadIdx.x; i < top.k; i += blockDim.x) {
    const idx_t id = top.ids[i];
    const float d = top.dist[i];
    ids_out[i] = partial || id != kNoId ? id : -1;
    dist_out[i] = negate && !partial ? -d : d;
  }
}

struct SelectArgs {
  const float* coarse;  // (nq, nlist)
  const float* x;       // (nq, d)
  idx_t nlist;
  int d;
  bool l2;
  int nprobe;
  idx_t* probes;       // (nq, nprobe) lists, best first
  float* probe_dist;   // (nq, nprobe) ||q - c||^2 or -<q, c>
};

struct ScanArgs {
  IvfPqDeviceIndex index;
  const float* x;             // (nq, d)
  const idx_t* probes;        // (nq, nprobe)
  const float* probe_dist;    // (nq, nprobe)
  int nprobe;
  int splits;                 // blocks per query, each scanning a slice of its probes
  int k;
  float* dist_out;            // (nq, k) final, or (nq, splits, k) partial when splits > 1
  idx_t* ids_out;
};

// Shared memory of scan_kernel: the query, its table, the top-k.
__host__ __device__ inline size_t scan_table_offset(int d) { return (size_t(d) * 4 + 15) / 16 * 16; }
__host__ __device__ inline size_t scan_top_k_offset(int d, int pq_m, bool fp16) {
  return scan_table_offset(d) + (size_t(pq_m) * kKsub * (fp16 ? 2 : 4) + 15) / 16 * 16;
}
__host__ __device__ inline size_t scan_shared_bytes(int d, int pq_m, bool fp16, int k) {
  return scan_top_k_offset(d, pq_m, fp16) + top_k_bytes(k, kScanRound);
}

struct MergeArgs {
  const float* part_dist;  // (nq, splits, k)
  const idx_t* part_ids;
  int splits;
  int k;
  bool negate;
  float* dist_out;  // (nq, k)
  idx_t* ids_out;
};

// scan_kernel<Lut> over `blocks` blocks of kThreads with smem bytes of shared memory; defined in
// scan_kernel.cuh and instantiated once per file (scan_f32.cu: float tables, scan_f16.cu: __half).
template <typename Lut>
void launch_scan(const ScanArgs& args, idx_t blocks, size_t smem, cudaStream_t stream);

}  // namespace retro::cuda::ivfpq
