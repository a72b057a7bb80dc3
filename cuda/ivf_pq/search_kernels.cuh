// The kernels of an IVF-PQ search on the GPU (retro/ivf_pq_cuda.h; host side: cuda/ivf_pq.cu),
// after the coarse GEMM (ivf_pq/coarse_gemm.cuh) has written coarse (nq, nlist) = ||c||^2 - 2<q, c>
// (L2) or -<q, c> (IP):
//   select_probes_kernel  one block per query: + ||q||^2 (L2), top-nprobe lists
//   scan_kernel           one block per (query, slice of its probes): the query's look-up table
//                         in shared memory, the slice's lists scanned warp per 64-vector block
//                         with 16-byte code loads, a fused BlockTopK; writes final results, or
//                         partial ones when a query's probes are split over several blocks
//   merge_kernel          one block per query: top-k of its blocks' partial results
#pragma once
#include <cuda_fp16.h>

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

__global__ void __launch_bounds__(kThreads) select_probes_kernel(SelectArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ float scratch[kWarps];
  const idx_t q = blockIdx.x;
  float qnorm = 0.0f;
  if (a.l2) {
    float part = 0.0f;
    for (int j = threadIdx.x; j < a.d; j += kThreads) part += a.x[q * a.d + j] * a.x[q * a.d + j];
    qnorm = block_sum(part, scratch);
  }
  BlockTopK top(smem, a.nprobe, kThreads);
  const float* row = a.coarse + q * a.nlist;
  for (idx_t c0 = 0; c0 < a.nlist; c0 += kThreads) {
    const idx_t c = c0 + threadIdx.x;
    if (c < a.nlist) top.push(a.l2 ? row[c] + qnorm : row[c], c);
    top.end_round();
  }
  top.finish();
  for (int p = threadIdx.x; p < a.nprobe; p += kThreads) {
    a.probes[q * a.nprobe + p] = top.ids[p];
    a.probe_dist[q * a.nprobe + p] = top.dist[p];
  }
}

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

template <typename Lut>
__device__ inline float lut_value(const Lut* row, unsigned byte) {
  if constexpr (sizeof(Lut) == 2) return __half2float(row[byte]);
  else return row[byte];
}

// Adds the table entries of the 16 codes in `bytes` (sub-quantizer m of 16 vectors) to acc.
template <typename Lut>
__device__ inline void add_codes(const Lut* row, uint4 bytes, float (&acc)[16]) {
  const unsigned words[4] = {bytes.x, bytes.y, bytes.z, bytes.w};
#pragma unroll
  for (int w = 0; w < 4; ++w)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[4 * w + b] += lut_value(row, (words[w] >> (8 * b)) & 0xffu);
}

// Halves the values a lane holds by summing with the lane `mask` away: the lane with the mask bit
// set keeps the upper half. Registers indexed by constants only.
template <int N>
__device__ inline void reduce_scatter_step(float (&acc)[16], int lane, int mask) {
  const bool upper = lane & mask;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const float send = upper ? acc[i] : acc[i + N / 2];
    const float keep = upper ? acc[i + N / 2] : acc[i];
    acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, mask);
  }
}

// The PQ sums of the 64 vectors of one code block, by one warp: lane = 4 * phase + quad loads the
// 16 bytes of sub-quantizers m = phase, phase + 8, ... for vectors [16 quad, 16 quad + 16); a
// reduce-scatter over the 8 phases leaves each lane the sums of vectors first and first + 1.
template <typename Lut>
__device__ inline void block_sums(const uint8_t* block, int pq_m, const Lut* lut, int lane,
                                  float& sum0, float& sum1, int& first) {
  const int quad = lane & 3, phase = lane >> 2;
  float acc[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) acc[i] = 0.0f;
  for (int m = phase; m < pq_m; m += 8) {
    const uint4 bytes = __ldg(reinterpret_cast<const uint4*>(block + m * kCodeBlock + quad * 16));
    add_codes(lut + m * kKsub, bytes, acc);
  }
  reduce_scatter_step<16>(acc, lane, 16);
  reduce_scatter_step<8>(acc, lane, 8);
  reduce_scatter_step<4>(acc, lane, 4);
  first = quad * 16 + ((lane >> 4) & 1) * 8 + ((lane >> 3) & 1) * 4 + ((lane >> 2) & 1) * 2;
  sum0 = acc[0];
  sum1 = acc[1];
}

template <typename Lut>
__global__ void __launch_bounds__(kThreads) scan_kernel(ScanArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const IvfPqDeviceIndex& ix = a.index;
  const idx_t q = blockIdx.x / a.splits;
  const int split = blockIdx.x % a.splits;
  const int dsub = ix.d / ix.pq_m;
  float* query = reinterpret_cast<float*>(smem);
  Lut* lut = reinterpret_cast<Lut*>(smem + scan_table_offset(ix.d));
  for (int j = threadIdx.x; j < ix.d; j += kThreads) query[j] = a.x[q * ix.d + j];
  __syncthreads();
  // lut[m][j] = scale <q_m, p_mj>, read coalesced from the transposed centroids
  const float scale = ix.metric == Metric::L2 ? -2.0f : -1.0f;
  for (int e = threadIdx.x; e < ix.pq_m * kKsub; e += kThreads) {
    const int m = e / kKsub, j = e % kKsub;
    const float* column = ix.pq_centroids_t + size_t(m) * dsub * kKsub + j;
    float acc = 0.0f;
    for (int t = 0; t < dsub; ++t) acc += query[m * dsub + t] * column[t * kKsub];
    if constexpr (sizeof(Lut) == 2) lut[e] = __float2half_rn(scale * acc);
    else lut[e] = scale * acc;
  }
  BlockTopK top(smem + scan_top_k_offset(ix.d, ix.pq_m, sizeof(Lut) == 2), a.k, kScanRound);

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int p0 = int(int64_t(a.nprobe) * split / a.splits);
  const int p1 = int(int64_t(a.nprobe) * (split + 1) / a.splits);
  for (int p = p0; p < p1; ++p) {
    const idx_t list = a.probes[q * a.nprobe + p];
    const idx_t size = ix.sizes[list];
    const idx_t base = ix.offsets[list];
    const float bias = a.probe_dist[q * a.nprobe + p];
    const idx_t blocks = (size + kCodeBlock - 1) / kCodeBlock;
    for (idx_t b0 = 0; b0 < blocks; b0 += kWarps) {
      const idx_t b = b0 + warp;
      if (b < blocks) {
        float sum0, sum1;
        int first;
        block_sums(ix.codes + (base + b * kCodeBlock) * ix.pq_m, ix.pq_m, lut, lane, sum0, sum1,
                   first);
        const idx_t i = b * kCodeBlock + first;
        const float* terms = ix.terms != nullptr ? ix.terms + base : nullptr;
        if (i < size) top.push(bias + (terms ? terms[i] : 0.0f) + sum0, ix.ids[base + i]);
        if (i + 1 < size) top.push(bias + (terms ? terms[i + 1] : 0.0f) + sum1, ix.ids[base + i + 1]);
      }
      top.end_round();
    }
  }
  top.finish();
  const bool partial = a.splits > 1;
  const size_t out = partial ? size_t(blockIdx.x) * a.k : size_t(q) * a.k;
  write_top_k(top, partial, ix.metric == Metric::InnerProduct, a.dist_out + out, a.ids_out + out);
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

__global__ void __launch_bounds__(kThreads) merge_kernel(MergeArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const idx_t q = blockIdx.x;
  const int n = a.splits * a.k;
  BlockTopK top(smem, a.k, kThreads);
  for (int c0 = 0; c0 < n; c0 += kThreads) {
    const int c = c0 + threadIdx.x;
    if (c < n && a.part_ids[q * n + c] != kNoId) top.push(a.part_dist[q * n + c], a.part_ids[q * n + c]);
    top.end_round();
  }
  top.finish();
  write_top_k(top, false, a.negate, a.dist_out + q * a.k, a.ids_out + q * a.k);
}

}  // namespace retro::cuda::ivfpq
