// The definitions behind attention/launch.h: grid sizes, shared memory and launches of the kernels
// (attention/kernels.cuh). Included only by the files of cuda/attention/instances/, each of which
// instantiates run_forward or run_backward for one (dtype, head_dim).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "attention/kernels.cuh"
#include "attention/launch.h"
#include "retro/error.h"

namespace retro::cuda {
namespace {

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Geometry geometry_of(const RetroAttentionParams& p, Cover cover) {
  Geometry g{p.op, p.tokens, p.chunks, p.neighbours, p.neighbour_len, p.chunk_size, p.q_offset,
             0, 0, p.nbr_lens};
  const int64_t m = p.chunk_size;
  switch (p.op) {
    case RetroAttention::ChunkedCross:
      if (cover == Cover::Queries) {
        g.first_chunk = floor_div(p.q_offset - (m - 1), m);
        g.groups_per_batch = floor_div(p.q_offset + p.tokens - 1 - (m - 1), m) - g.first_chunk + 1;
      } else {
        g.groups_per_batch = p.chunks;
      }
      break;
    case RetroAttention::NeighbourSelf: g.groups_per_batch = p.chunks * p.neighbours; break;
    case RetroAttention::NeighbourCross:
      g.groups_per_batch = cover == Cover::Queries ? p.chunks : std::max(p.chunks, ceil_div(p.tokens, m));
      break;
  }
  return g;
}

void check_launch(const char* what) {
  const cudaError_t status = cudaGetLastError();
  RETRO_CHECK(status == cudaSuccess, "CUDA attention %s failed: %s", what,
              cudaGetErrorString(status));
}

// The launch size of a kernel's shared memory: its layout (kernels.cuh) counted on no memory.
template <typename Layout>
size_t shared_bytes() {
  return Layout(nullptr).carver.bytes();
}

template <typename... Args>
void launch(void (*kernel)(Args...), int64_t groups, int tiles, int64_t heads, int threads,
            size_t smem, cudaStream_t stream, const char* what, Args... args) {
  if (groups <= 0 || tiles <= 0) return;
  RETRO_CHECK(groups * tiles < (int64_t{1} << 31) && heads < 65536,
              "CUDA attention %s: grid of %lld x %lld CTAs is too large", what,
              static_cast<long long>(groups * tiles), static_cast<long long>(heads));
  cudaError_t status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  RETRO_CHECK(status == cudaSuccess, "CUDA attention %s: %zu bytes of shared memory refused: %s",
              what, smem, cudaGetErrorString(status));
  kernel<<<dim3(static_cast<unsigned>(groups * tiles), static_cast<unsigned>(heads)), threads,
           smem, stream>>>(args...);
  check_launch(what);
}

// Whether one CTA per group can write every gradient row: the group's queries fit one tile, and
// the query cover's groups hold every key row (CCA: the call covers all chunks, as in training).
bool takes_fused_backward(const RetroAttentionParams& p, const Geometry& by_query) {
  if (max_query_slots(p) > kTile) return false;
  switch (p.op) {
    case RetroAttention::ChunkedCross:
      return by_query.first_chunk <= 0 &&
             by_query.first_chunk + by_query.groups_per_batch - 1 >= p.chunks - 1;
    case RetroAttention::NeighbourSelf: return true;
    case RetroAttention::NeighbourCross: return false;  // decoder rows past the chunks
  }
  return false;
}

}  // namespace

template <typename T, int Dh>
void run_forward(const RetroAttentionParams& p, const AttentionForward& f, cudaStream_t stream) {
  Tensors<T> t{};
  t.q = static_cast<const T*>(f.q);
  t.k = static_cast<const T*>(f.k);
  t.v = static_cast<const T*>(f.v);
  t.result = static_cast<T*>(f.out);
  t.lse_out = static_cast<float*>(f.lse);
  t.heads = p.heads;
  t.scale = static_cast<float>(p.scale);
  t.tiles = static_cast<int>(ceil_div(std::max<int64_t>(max_query_slots(p), 1), kTile));
  const Geometry g = geometry_of(p, Cover::Queries);
  launch(forward_kernel<T, Dh>, p.batch * g.groups_per_batch, t.tiles, p.heads, kThreads,
         shared_bytes<QueryTileShared<T, Dh, false>>(), stream, "forward", g, t);
}

template <typename T, int Dh>
void run_backward(const RetroAttentionParams& p, const AttentionBackward& b, float* delta,
                  bool fused, cudaStream_t stream) {
  Tensors<T> t{};
  t.q = static_cast<const T*>(b.q);
  t.k = static_cast<const T*>(b.k);
  t.v = static_cast<const T*>(b.v);
  t.out = static_cast<const T*>(b.out);
  t.grad_out = static_cast<const T*>(b.grad_out);
  t.lse = static_cast<const float*>(b.lse);
  t.delta = delta;
  t.result = static_cast<T*>(b.grad_q);
  t.grad_k = static_cast<T*>(b.grad_k);
  t.grad_v = static_cast<T*>(b.grad_v);
  t.heads = p.heads;
  t.scale = static_cast<float>(p.scale);

  const int64_t rows = query_rows(p) * p.heads;
  if (rows > 0) {
    delta_kernel<T, Dh><<<static_cast<unsigned>(ceil_div(rows, 256)), 256, 0, stream>>>(
        t.out, t.grad_out, delta, rows);
    check_launch("backward (delta)");
  }
  const Geometry by_query = geometry_of(p, Cover::Queries);
  if constexpr (Dh == 64) {  // at 128 the three accumulators would not fit the registers
    if (fused && takes_fused_backward(p, by_query)) {
      t.tiles = 1;
      launch(grad_fused_kernel<T, Dh>, p.batch * by_query.groups_per_batch, 1, p.heads, kThreads,
             shared_bytes<QueryTileShared<T, Dh, true, true>>(), stream,
             "backward (fused)", by_query, t);
      return;
    }
  }
  t.tiles = static_cast<int>(ceil_div(std::max<int64_t>(max_query_slots(p), 1), kTile));
  launch(grad_q_kernel<T, Dh>, p.batch * by_query.groups_per_batch, t.tiles, p.heads, kThreads,
         shared_bytes<QueryTileShared<T, Dh, true>>(), stream, "backward (grad q)", by_query, t);
  const Geometry by_key = geometry_of(p, Cover::Keys);
  t.tiles = static_cast<int>(ceil_div(std::max<int64_t>(max_key_slots(p), 1), kTile));
  launch(grad_kv_kernel<T, Dh>, p.batch * by_key.groups_per_batch, t.tiles, p.heads, kThreads,
         shared_bytes<KeyTileShared<T, Dh>>(), stream, "backward (grad k, v)", by_key, t);
}

}  // namespace retro::cuda
