// The probe selection and the merge of split scans (the kernels of ivf_pq/search_common.cuh that
// cuda/ivf_pq.cu launches itself).
#pragma once
#include "ivf_pq/search_common.cuh"

namespace retro::cuda::ivfpq {

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
