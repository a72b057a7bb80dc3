// The host side of the attention kernels, split as flash-attention splits it: cuda/attention.cu
// checks a call and dispatches it to run_forward / run_backward<T, Dh>, each explicitly
// instantiated in its own file of cuda/attention/instances/ (written by generate_instances.py), so
// nvcc builds the instantiations in parallel and one of them compile-checks the kernels.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "retro/attention.h"

namespace retro::cuda {

// Slots per group on each side (the widest group of the call).
inline int64_t max_query_slots(const RetroAttentionParams& p) {
  switch (p.op) {
    case RetroAttention::ChunkedCross: return std::min(p.chunk_size, p.tokens);
    case RetroAttention::NeighbourSelf: return p.neighbour_len;
    case RetroAttention::NeighbourCross: return p.neighbours * p.neighbour_len;
  }
  return 0;
}

inline int64_t max_key_slots(const RetroAttentionParams& p) {
  switch (p.op) {
    case RetroAttention::ChunkedCross: return p.neighbours * p.neighbour_len;
    case RetroAttention::NeighbourSelf: return p.neighbour_len;
    case RetroAttention::NeighbourCross: return p.chunk_size;
  }
  return 0;
}

// T: __nv_bfloat16 or __half; Dh: 64 or 128. Parameters already checked (attention.cu).
template <typename T, int Dh>
void run_forward(const RetroAttentionParams& p, const AttentionForward& f, cudaStream_t stream);
// fused: whether grad q, k and v may run in one kernel where that covers every row.
template <typename T, int Dh>
void run_backward(const RetroAttentionParams& p, const AttentionBackward& b, float* delta,
                  bool fused, cudaStream_t stream);

}  // namespace retro::cuda
