// The k best (smallest) (distance, id) pairs one thread block has seen, kept in shared memory: the
// fused top-k of the coarse selection, the list scan and the merge (cuda/ivf_pq.cu).
//
// Work goes in rounds. Within a round threads push() candidates that do not exceed the current
// threshold (at most `round` pushes per round, all threads together); end_round() is collective
// and, when the next round could overflow the buffer, sorts it (bitonic, by (distance, id)) and
// keeps the best k, whose worst distance becomes the threshold. Ties keep the smaller id, as the
// CPU's TopK (cpp/src/top_k.h), so the kept set does not depend on the order of the pushes.
#pragma once
#include <cstdint>

#include "retro/types.h"

namespace retro::cuda::ivfpq {

constexpr idx_t kNoId = INT64_MAX;  // sorts after every real id on equal distances

__host__ __device__ constexpr int next_pow2(int x) {
  int p = 1;
  while (p < x) p <<= 1;
  return p;
}

// Buffer entries for k results and rounds of `round` pushes.
__host__ __device__ constexpr int top_k_capacity(int k, int round) { return next_pow2(k + round); }

// Shared-memory bytes of a BlockTopK (8-byte aligned start).
__host__ __device__ constexpr size_t top_k_bytes(int k, int round) {
  return size_t(top_k_capacity(k, round)) * (sizeof(idx_t) + sizeof(float)) + 16;
}

struct BlockTopK {
  idx_t* ids;        // (capacity,)
  float* dist;       // (capacity,)
  int* count;        // entries in use
  float* threshold;  // largest distance that can still enter
  int capacity;      // power of 2, >= k + round
  int k;
  int round;

  // Lays the buffer out at `smem` (8-byte aligned) and empties it; collective.
  __device__ BlockTopK(void* smem, int k_, int round_) : k(k_), round(round_) {
    capacity = top_k_capacity(k_, round_);
    ids = static_cast<idx_t*>(smem);
    dist = reinterpret_cast<float*>(ids + capacity);
    count = reinterpret_cast<int*>(dist + capacity);
    threshold = reinterpret_cast<float*>(count + 1);
    if (threadIdx.x == 0) {
      *count = 0;
      *threshold = __int_as_float(0x7f800000);  // +inf
    }
    __syncthreads();
  }

  __device__ void push(float d, idx_t id) const {
    if (d > *threshold) return;
    const int slot = atomicAdd(count, 1);
    dist[slot] = d;
    ids[slot] = id;
  }

  // Collective, after every round of pushes.
  __device__ void end_round() const {
    __syncthreads();
    const int used = *count;
    __syncthreads();  // every thread has read count before any thread changes it
    if (used + round > capacity) keep_best(used);
  }

  // Collective: sorts and keeps the best k; entries [0, min(count, k)) are then in order and the
  // rest of [0, k) holds (+inf, kNoId).
  __device__ void finish() const {
    __syncthreads();
    const int used = *count;
    __syncthreads();
    keep_best(used);
  }

 private:
  __device__ bool after(int a, int b) const {  // entry a sorts after entry b
    return dist[a] > dist[b] || (dist[a] == dist[b] && ids[a] > ids[b]);
  }

  __device__ void keep_best(int used) const {
    for (int i = used + threadIdx.x; i < capacity; i += blockDim.x) {
      dist[i] = __int_as_float(0x7f800000);
      ids[i] = kNoId;
    }
    __syncthreads();
    for (int size = 2; size <= capacity; size <<= 1) {
      for (int stride = size / 2; stride > 0; stride >>= 1) {
        for (int i = threadIdx.x; i < capacity / 2; i += blockDim.x) {
          const int lo = 2 * i - (i & (stride - 1));  // pair (lo, lo + stride) of this stage
          const int hi = lo + stride;
          const bool ascending = (lo & size) == 0;
          if (after(lo, hi) == ascending) {
            const float d = dist[lo];
            dist[lo] = dist[hi];
            dist[hi] = d;
            const idx_t id = ids[lo];
            ids[lo] = ids[hi];
            ids[hi] = id;
          }
        }
        __syncthreads();
      }
    }
    if (threadIdx.x == 0) {
      *count = used < k ? used : k;
      if (used >= k) *threshold = dist[k - 1];
    }
    __syncthreads();
  }
};

}  // namespace retro::cuda::ivfpq
