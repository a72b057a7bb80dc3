// The scan of an IVF-PQ search (ivf_pq/search_common.cuh): one block per (query, slice of its
// probes). Included only by scan_f32.cu and scan_f16.cu, each instantiating launch_scan once.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ivf_pq/launch.cuh"
#include "ivf_pq/search_common.cuh"

namespace retro::cuda::ivfpq {

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

template <typename Lut>
void launch_scan(const ScanArgs& args, idx_t blocks, size_t smem, cudaStream_t stream) {
  launch(scan_kernel<Lut>, blocks, 1, kThreads, smem, stream, "scan", args);
}

}  // namespace retro::cuda::ivfpq
