// The attention kernels. One CTA of four warps works on a 64-slot tile of one group and one head;
// warp w owns rows 16w .. 16w + 15 of it, and keeps its scores, probabilities and accumulators in
// registers (fragments.cuh). Groups are small (CCA: m = 64 queries x K R = 256 keys), so:
//   forward: a query tile against all the group's key tiles, with a running softmax; the K and V
//            tiles double-buffered;
//   grad q:  a query tile against all key tiles (probabilities recomputed from the forward's lse);
//   grad kv: a key tile against all the group's query tiles.
// Every gradient row has one writer: no atomics.
#pragma once
#include <cmath>
#include <cstdint>

#include "attention/fragments.cuh"
#include "attention/groups.cuh"
#include "attention/tiles.cuh"

namespace retro::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kSub = 32;  // slots per product in the backward (bounds the live registers)

template <typename T>
struct Tensors {
  const T* q;
  const T* k;
  const T* v;
  const T* out;
  const T* grad_out;
  const float* lse;
  const float* delta;  // rowsum(grad_out * out) per (query row, head)
  T* result;           // forward: out; backward: grad_q
  float* lse_out;
  T* grad_k;
  T* grad_v;
  int64_t heads;
  float scale;
  int tiles;  // query tiles (forward, grad q) or key tiles (grad kv) per group
};

// Hands out a kernel's dynamic shared memory in order. On the kernel's smem it carves; on no memory
// (the host) it only counts: one layout struct per kernel gives both its pointers and, on the
// host, its launch size (shared_bytes in run.cuh).
class SharedCarver {
 public:
  __host__ __device__ explicit SharedCarver(unsigned char* base)
      : base_(reinterpret_cast<uintptr_t>(base)), at_(base_) {}
  template <typename U>
  __host__ __device__ U* take(size_t count) {
    U* p = reinterpret_cast<U*>(at_);
    at_ += count * sizeof(U);
    return p;
  }
  template <typename T, int Cols>  // n tiles of 64 padded rows of Cols elements
  __host__ __device__ T* tiles(int n) {
    return take<T>(size_t(n) * kTile * kRowStride<Cols>);
  }
  __host__ __device__ size_t bytes() const { return at_ - base_; }

 private:
  uintptr_t base_, at_;
};

// The shared memory of the kernels that own a query tile: the forward (Grad false), grad q (Grad)
// and the fused backward (Grad, WithDs), carved top to bottom.
template <typename T, int Dh, bool Grad, bool WithDs = false>
struct QueryTileShared {
  SharedCarver carver;
  T* q_tile{carver.tiles<T, Dh>(1)};
  T* go_tile{carver.tiles<T, Dh>(Grad ? 1 : 0)};
  T* k_tiles{carver.tiles<T, Dh>(2)};  // two buffers
  T* v_tiles{carver.tiles<T, Dh>(2)};  // two buffers
  T* ds_tile{carver.tiles<T, kTile>(WithDs ? 1 : 0)};  // dS (queries x keys) of one key tile
  float* lse{carver.take<float>(Grad ? kTile : 0)};
  float* delta{carver.take<float>(Grad ? kTile : 0)};
  uint8_t* q_real{carver.take<uint8_t>(kTile)};
  uint8_t* key_real{carver.take<uint8_t>(kMaxKeySlots)};
  __host__ __device__ explicit QueryTileShared(unsigned char* base) : carver(base) {}
};

// The shared memory of grad kv: its key and value tiles, then the query tile it visits.
template <typename T, int Dh>
struct KeyTileShared {
  SharedCarver carver;
  T* k_tile{carver.tiles<T, Dh>(1)};
  T* v_tile{carver.tiles<T, Dh>(1)};
  T* q_tile{carver.tiles<T, Dh>(1)};
  T* go_tile{carver.tiles<T, Dh>(1)};
  float* lse{carver.take<float>(kTile)};
  float* delta{carver.take<float>(kTile)};
  uint8_t* key_real{carver.take<uint8_t>(kTile)};
  uint8_t* q_real{carver.take<uint8_t>(kTile)};
  __host__ __device__ explicit KeyTileShared(unsigned char* base) : carver(base) {}
};

// The column (slot within its 8-wide tile j) of accumulator element e of this lane.
__device__ int column_of(int j, int e) { return 8 * j + 2 * (threadIdx.x % 4) + (e & 1); }
// The row (within the warp's 16) of accumulator element e of this lane.
__device__ int row_of(int e) { return (threadIdx.x % 32) / 4 + 8 * (e / 2); }

// Per-slot statistics of a query tile: the forward's lse (-inf for slots that are not real) and
// delta.
template <typename T>
__device__ void load_row_stats(float* lse, float* delta, const Tensors<T>& t, const Slots& q,
                               int first, int h) {
  for (int r = threadIdx.x; r < kTile; r += blockDim.x) {
    const bool real = q.real(first + r);
    const int64_t at = (q.row0 + first + r) * t.heads + h;
    lse[r] = real ? t.lse[at] : -INFINITY;
    delta[r] = real ? t.delta[at] : 0.0f;
  }
}

// P of a score from the forward's lse, 0 where the key is masked or the query attends nothing.
__device__ float probability(float score, float lse, bool key_real, float scale) {
  return key_real && lse != -INFINITY ? __expf(score * scale - lse) : 0.0f;
}

// The group's key and value tiles are double-buffered (two 64-slot buffers each): tile 0 starts
// before the loop over key tiles (the caller commits it with its own copies) ...
template <typename T, int Dh>
__device__ void first_key_tile(T* k_tiles, T* v_tiles, const Tensors<T>& t, const Slots& k,
                               const uint8_t* key_real, int key_tiles, int h) {
  if (key_tiles == 0) return;
  copy_tile<T, Dh>(k_tiles, t.k, k, key_real, 0, t.heads, h);
  copy_tile<T, Dh>(v_tiles, t.v, k, key_real, 0, t.heads, h);
}

// ... and at the top of iteration kt, tile kt + 1 (if any) starts into the buffers tile kt is not
// in; then the CTA waits until tile kt and every earlier copy have landed.
template <typename T, int Dh>
__device__ void next_key_tile(T* k_tiles, T* v_tiles, const Tensors<T>& t, const Slots& k,
                              const uint8_t* key_real, int kt, int key_tiles, int h) {
  if (kt + 1 < key_tiles) {
    const int next = (kt + 1) * kTile, other = (1 - kt % 2) * kTile * kRowStride<Dh>;
    copy_tile<T, Dh>(k_tiles + other, t.k, k, key_real + next, next, t.heads, h);
    copy_tile<T, Dh>(v_tiles + other, t.v, k, key_real + next, next, t.heads, h);
  }
  commit_copies();
  wait_copies<1>();
  __syncthreads();
}

template <typename T, int Dh>
__global__ void __launch_bounds__(kThreads) forward_kernel(Geometry geo, Tensors<T> t) {
  constexpr int ld = kRowStride<Dh>;
  extern __shared__ __align__(128) unsigned char smem[];
  const QueryTileShared<T, Dh, false> s(smem);

  const Group g = group_of(geo, blockIdx.x / t.tiles, Cover::Queries);
  const int q_first = (blockIdx.x % t.tiles) * kTile, h = blockIdx.y;
  if (q_first >= g.q.slots) return;
  const int lane = threadIdx.x % 32, row0 = (threadIdx.x / 32) * 16;
  const int key_tiles = (g.k.slots + kTile - 1) / kTile;

  mark_real(s.q_real, g.q, q_first, kTile);
  mark_real(s.key_real, g.k, 0, key_tiles * kTile);
  __syncthreads();
  copy_tile<T, Dh>(s.q_tile, t.q, g.q, s.q_real, q_first, t.heads, h);
  first_key_tile<T, Dh>(s.k_tiles, s.v_tiles, t, g.k, s.key_real, key_tiles, h);
  commit_copies();

  uint32_t q_frag[Dh / 16][4];
  float out[Dh / 8][4] = {};
  float top[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};  // per row_of(e) / 8
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int buffer = kt % 2;
    next_key_tile<T, Dh>(s.k_tiles, s.v_tiles, t, g.k, s.key_real, kt, key_tiles, h);
    if (kt == 0) load_rows<T, Dh>(q_frag, s.q_tile + row0 * ld);

    float score[kTile / 8][4] = {};
    rows_times_tile<T, Dh, kTile>(score, q_frag, s.k_tiles + buffer * kTile * ld);
    float tile_top[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        score[j][e] = s.key_real[kt * kTile + column_of(j, e)] ? score[j][e] * t.scale : -INFINITY;
        tile_top[e / 2] = fmaxf(tile_top[e / 2], score[j][e]);
      }
    float rescale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // the four lanes of a quad share a row
      tile_top[r] = fmaxf(tile_top[r], __shfl_xor_sync(0xffffffffu, tile_top[r], 1));
      tile_top[r] = fmaxf(tile_top[r], __shfl_xor_sync(0xffffffffu, tile_top[r], 2));
      const float new_top = fmaxf(top[r], tile_top[r]);
      rescale[r] = new_top == -INFINITY ? 1.0f : __expf(top[r] - new_top);
      top[r] = new_top;
      sum[r] *= rescale[r];
    }
#pragma unroll
    for (int j = 0; j < Dh / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) out[j][e] *= rescale[e / 2];
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = top[e / 2] == -INFINITY ? 0.0f : __expf(score[j][e] - top[e / 2]);
        sum[e / 2] += p;
        score[j][e] = p;
      }
    probs_times_tile<T, Dh, kTile>(out, score, s.v_tiles + buffer * kTile * ld);
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }
  wait_copies<0>();
  __syncthreads();  // q_tile has landed even without keys, and is free for the output

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
    sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
    const int row = row0 + row_of(2 * r), slot = q_first + row;
    const bool attends = s.q_real[row] && top[r] != -INFINITY && sum[r] > 0.0f;
    inv[r] = attends ? 1.0f / sum[r] : 0.0f;
    if (lane % 4 == 0 && slot < g.q.slots)
      t.lse_out[(g.q.row0 + slot) * t.heads + h] = attends ? top[r] + logf(sum[r]) : -INFINITY;
  }
  stage_rows<T, Dh>(s.q_tile, row0, out, inv);
  write_rows<T, Dh>(t.result, s.q_tile, row0, g.q, q_first, t.heads, h);
}

// delta = rowsum(grad_out * out) per (query row, head), fp32: the softmax backward's row term.
template <typename T, int Dh>
__global__ void delta_kernel(const T* out, const T* grad_out, float* delta, int64_t rows) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows) return;
  float sum = 0.0f;
  for (int c = 0; c < Dh; c += 8) {
    const uint4 a = *reinterpret_cast<const uint4*>(out + i * Dh + c);
    const uint4 b = *reinterpret_cast<const uint4*>(grad_out + i * Dh + c);
    const T* x = reinterpret_cast<const T*>(&a);
    const T* y = reinterpret_cast<const T*>(&b);
    for (int e = 0; e < 8; ++e) sum += to_float(x[e]) * to_float(y[e]);
  }
  delta[i] = sum;
}

template <typename T, int Dh>
__global__ void __launch_bounds__(kThreads) grad_q_kernel(Geometry geo, Tensors<T> t) {
  constexpr int ld = kRowStride<Dh>;
  extern __shared__ __align__(128) unsigned char smem[];
  const QueryTileShared<T, Dh, true> s(smem);

  const Group g = group_of(geo, blockIdx.x / t.tiles, Cover::Queries);
  const int q_first = (blockIdx.x % t.tiles) * kTile, h = blockIdx.y;
  if (q_first >= g.q.slots) return;
  const int row0 = (threadIdx.x / 32) * 16;
  const int key_tiles = (g.k.slots + kTile - 1) / kTile;

  mark_real(s.q_real, g.q, q_first, kTile);
  mark_real(s.key_real, g.k, 0, key_tiles * kTile);
  load_row_stats(s.lse, s.delta, t, g.q, q_first, h);
  __syncthreads();
  copy_tile<T, Dh>(s.q_tile, t.q, g.q, s.q_real, q_first, t.heads, h);
  copy_tile<T, Dh>(s.go_tile, t.grad_out, g.q, s.q_real, q_first, t.heads, h);
  first_key_tile<T, Dh>(s.k_tiles, s.v_tiles, t, g.k, s.key_real, key_tiles, h);
  commit_copies();
  const float row_lse[2] = {s.lse[row0 + row_of(0)], s.lse[row0 + row_of(2)]};
  const float row_delta[2] = {s.delta[row0 + row_of(0)], s.delta[row0 + row_of(2)]};

  uint32_t q_frag[Dh / 16][4], go_frag[Dh / 16][4];
  float grad[Dh / 8][4] = {};
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int buffer = kt % 2;
    next_key_tile<T, Dh>(s.k_tiles, s.v_tiles, t, g.k, s.key_real, kt, key_tiles, h);
    if (kt == 0) {
      load_rows<T, Dh>(q_frag, s.q_tile + row0 * ld);
      load_rows<T, Dh>(go_frag, s.go_tile + row0 * ld);
    }
#pragma unroll
    for (int sub = 0; sub < kTile; sub += kSub) {
      const T* keys = s.k_tiles + (buffer * kTile + sub) * ld;
      float ds[kSub / 8][4] = {}, grad_p[kSub / 8][4] = {};
      rows_times_tile<T, Dh, kSub>(ds, q_frag, keys);
      rows_times_tile<T, Dh, kSub>(grad_p, go_frag, s.v_tiles + (buffer * kTile + sub) * ld);
#pragma unroll
      for (int j = 0; j < kSub / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float p = probability(ds[j][e], row_lse[e / 2],
                                      s.key_real[kt * kTile + sub + column_of(j, e)], t.scale);
          ds[j][e] = p * (grad_p[j][e] - row_delta[e / 2]) * t.scale;
        }
      probs_times_tile<T, Dh, kSub>(grad, ds, keys);  // grad_q += dS k
    }
    __syncthreads();
  }
  wait_copies<0>();
  __syncthreads();
  stage_rows<T, Dh>(s.q_tile, row0, grad, {1.0f, 1.0f});
  write_rows<T, Dh>(t.result, s.q_tile, row0, g.q, q_first, t.heads, h);
}

// The backward of a warp's 16 key rows against kSub query rows (lse and delta point at theirs):
// grad_v += P^T grad_out and grad_k += dS^T q; dS^T (keys x queries, C layout) is left in ds_t.
template <typename T, int Dh>
__device__ void key_rows_backward(float (&grad_k)[Dh / 8][4], float (&grad_v)[Dh / 8][4],
                                  float (&ds_t)[kSub / 8][4], const T* key_rows,
                                  const T* value_rows, const T* queries, const T* grads_out,
                                  const float* lse, const float* delta, const bool (&row_real)[2],
                                  float scale) {
  float p_t[kSub / 8][4] = {};
  {
    uint32_t k_frag[Dh / 16][4];
    load_rows<T, Dh>(k_frag, key_rows);
    rows_times_tile<T, Dh, kSub>(p_t, k_frag, queries);
  }
#pragma unroll
  for (int j = 0; j < kSub / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) ds_t[j][e] = 0.0f;
  {
    uint32_t v_frag[Dh / 16][4];
    load_rows<T, Dh>(v_frag, value_rows);
    rows_times_tile<T, Dh, kSub>(ds_t, v_frag, grads_out);  // dP^T
  }
#pragma unroll
  for (int j = 0; j < kSub / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = column_of(j, e);
      p_t[j][e] = probability(p_t[j][e], lse[c], row_real[e / 2], scale);
      ds_t[j][e] = p_t[j][e] * (ds_t[j][e] - delta[c]) * scale;
    }
  probs_times_tile<T, Dh, kSub>(grad_v, p_t, grads_out);  // grad_v += P^T grad_out
  probs_times_tile<T, Dh, kSub>(grad_k, ds_t, queries);   // grad_k += dS^T q
}

template <typename T, int Dh>
__global__ void __launch_bounds__(kThreads) grad_kv_kernel(Geometry geo, Tensors<T> t) {
  constexpr int ld = kRowStride<Dh>;
  extern __shared__ __align__(128) unsigned char smem[];
  const KeyTileShared<T, Dh> s(smem);

  const Group g = group_of(geo, blockIdx.x / t.tiles, Cover::Keys);
  const int k_first = (blockIdx.x % t.tiles) * kTile, h = blockIdx.y;
  if (k_first >= g.k.slots) return;
  const int row0 = (threadIdx.x / 32) * 16;

  mark_real(s.key_real, g.k, k_first, kTile);
  __syncthreads();
  copy_tile<T, Dh>(s.k_tile, t.k, g.k, s.key_real, k_first, t.heads, h);
  copy_tile<T, Dh>(s.v_tile, t.v, g.k, s.key_real, k_first, t.heads, h);
  const bool row_real[2] = {s.key_real[row0 + row_of(0)] != 0, s.key_real[row0 + row_of(2)] != 0};
  float grad_k[Dh / 8][4] = {}, grad_v[Dh / 8][4] = {};
  const int query_tiles = (g.q.slots + kTile - 1) / kTile;
  for (int qt = 0; qt < query_tiles; ++qt) {
    __syncthreads();  // the previous query tile is consumed
    mark_real(s.q_real, g.q, qt * kTile, kTile);
    load_row_stats(s.lse, s.delta, t, g.q, qt * kTile, h);
    __syncthreads();
    copy_tile<T, Dh>(s.q_tile, t.q, g.q, s.q_real, qt * kTile, t.heads, h);
    copy_tile<T, Dh>(s.go_tile, t.grad_out, g.q, s.q_real, qt * kTile, t.heads, h);
    commit_copies();
    wait_copies<0>();
    __syncthreads();
#pragma unroll
    for (int sub = 0; sub < kTile; sub += kSub) {
      float ds_t[kSub / 8][4];
      key_rows_backward<T, Dh>(grad_k, grad_v, ds_t, s.k_tile + row0 * ld, s.v_tile + row0 * ld,
                               s.q_tile + sub * ld, s.go_tile + sub * ld, s.lse + sub,
                               s.delta + sub, row_real, t.scale);
    }
  }
  commit_copies();  // a key tile without queries still started its copies
  wait_copies<0>();
  __syncthreads();  // q_tile is free for staging
  stage_rows<T, Dh>(s.q_tile, row0, grad_v, {1.0f, 1.0f});
  write_rows<T, Dh>(t.grad_v, s.q_tile, row0, g.k, k_first, t.heads, h);
  stage_rows<T, Dh>(s.q_tile, row0, grad_k, {1.0f, 1.0f});
  write_rows<T, Dh>(t.grad_k, s.q_tile, row0, g.k, k_first, t.heads, h);
}

// grad q, k and v in one CTA per group, for groups whose queries fit one tile (CCA with m <= 64
// when the call covers every chunk, as in training; the encoder's self-attention with R <= 64):
// K and V are read once. Warp w owns key rows 16w .. of each key tile for grad k and v, then
// query rows 16w .. for grad q, through dS staged in shared memory.
template <typename T, int Dh>
__global__ void __launch_bounds__(kThreads) grad_fused_kernel(Geometry geo, Tensors<T> t) {
  constexpr int ld = kRowStride<Dh>, lds = kRowStride<kTile>;
  extern __shared__ __align__(128) unsigned char smem[];
  const QueryTileShared<T, Dh, true, true> s(smem);

  const Group g = group_of(geo, blockIdx.x, Cover::Queries);
  const int h = blockIdx.y;
  if (g.q.slots == 0) return;
  const int row0 = (threadIdx.x / 32) * 16;
  const int key_tiles = (g.k.slots + kTile - 1) / kTile;

  mark_real(s.q_real, g.q, 0, kTile);
  mark_real(s.key_real, g.k, 0, key_tiles * kTile);
  load_row_stats(s.lse, s.delta, t, g.q, 0, h);
  __syncthreads();
  copy_tile<T, Dh>(s.q_tile, t.q, g.q, s.q_real, 0, t.heads, h);
  copy_tile<T, Dh>(s.go_tile, t.grad_out, g.q, s.q_real, 0, t.heads, h);
  first_key_tile<T, Dh>(s.k_tiles, s.v_tiles, t, g.k, s.key_real, key_tiles, h);
  commit_copies();

  float grad_q[Dh / 8][4] = {};
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int buffer = kt % 2;
    next_key_tile<T, Dh>(s.k_tiles, s.v_tiles, t, g.k, s.key_real, kt, key_tiles, h);
    T* keys = s.k_tiles + buffer * kTile * ld;
    T* values = s.v_tiles + buffer * kTile * ld;
    const bool row_real[2] = {s.key_real[kt * kTile + row0 + row_of(0)] != 0,
                              s.key_real[kt * kTile + row0 + row_of(2)] != 0};
    float grad_k[Dh / 8][4] = {}, grad_v[Dh / 8][4] = {};
#pragma unroll
    for (int sub = 0; sub < kTile; sub += kSub) {
      float ds_t[kSub / 8][4];
      key_rows_backward<T, Dh>(grad_k, grad_v, ds_t, keys + row0 * ld, values + row0 * ld,
                               s.q_tile + sub * ld, s.go_tile + sub * ld, s.lse + sub,
                               s.delta + sub, row_real, t.scale);
#pragma unroll
      for (int j = 0; j < kSub / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          s.ds_tile[(sub + column_of(j, e)) * lds + row0 + row_of(e)] = from_float<T>(ds_t[j][e]);
    }
    __syncthreads();  // dS of the whole tile is staged
    {
      uint32_t ds_frag[kTile / 16][4];
      load_rows<T, kTile>(ds_frag, s.ds_tile + row0 * lds);
      frags_times_tile<T, Dh, kTile>(grad_q, ds_frag, keys);  // grad_q += dS k
    }
    __syncthreads();  // every warp is done with this tile's keys and dS
    stage_rows<T, Dh>(values, row0, grad_v, {1.0f, 1.0f});
    write_rows<T, Dh>(t.grad_v, values, row0, g.k, kt * kTile, t.heads, h);
    stage_rows<T, Dh>(keys, row0, grad_k, {1.0f, 1.0f});
    write_rows<T, Dh>(t.grad_k, keys, row0, g.k, kt * kTile, t.heads, h);
    __syncthreads();  // the buffer is free for the tile after next
  }
  wait_copies<0>();
  __syncthreads();
  stage_rows<T, Dh>(s.q_tile, row0, grad_q, {1.0f, 1.0f});
  write_rows<T, Dh>(t.result, s.q_tile, row0, g.q, 0, t.heads, h);
}

}  // namespace
}  // namespace retro::cuda
