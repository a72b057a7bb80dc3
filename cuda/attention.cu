// Fused CUDA kernels for RETRO's three attentions (shapes and semantics:
// cpp/include/retro/attention.h; the CPU path with the same groups: cpp/src/attention/).
//
// A group is a set of query slots that all attend to one set of key slots. RETRO's groups are small
// (CCA: m = 64 queries x K R = 256 keys), so one CTA holds a query tile's whole score row in shared
// memory: a plain softmax with no running rescale, and a backward without atomics, since every
// gradient row has one writer. Slots map to tensor rows by index arithmetic (the shift of CCA by
// m - 1, the chunk boundaries, the neighbour lengths), so there are no copies around the kernels.
//
// Tiles move from global to shared memory with cp.async (16 bytes per copy, rows that are not
// real slots zero-filled). The forward keeps scores, probabilities and the output in registers
// (mma.sync m16n8k16 fragments, fp32 accumulation; the K and V tiles double-buffered), with a
// running softmax over the group's key tiles. The backward kernels stage their products in shared
// memory through WMMA. Each warp owns 16 rows of a 64-row tile.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "retro/cuda.h"
#include "retro/error.h"

namespace retro::cuda {
namespace {

using namespace nvcuda;

constexpr int kTile = 64;      // query or key slots per tile
constexpr int kHalfPad = 8;    // 16-bit elements of padding per shared row (spreads the banks)
constexpr int kFloatPad = 4;   // the same for float rows
constexpr int kMaxKeySlots = 512;  // widest score row a CTA holds (K R for CCA)

// Which side's rows a grid of groups covers exactly once: the query side for the forward and the
// query gradient, the key side for the key and value gradients.
enum class Cover { Queries, Keys };

// One side of a group: slot s is tensor row row0 + s; it is real when s < slots and
// s % seg < lens[s / seg] (no lens: every slot is real).
struct Slots {
  int64_t row0 = 0;
  int slots = 0;
  int seg = 1;
  const int32_t* lens = nullptr;

  __device__ bool real(int s) const {
    if (s >= slots) return false;
    if (lens == nullptr) return true;
    const int len = min(max(__ldg(lens + s / seg), 0), seg);  // lengths are clamped to [0, R]
    return s % seg < len;
  }
};

struct Group {
  Slots q, k;
};

// Everything a kernel needs to find its group: the sizes of one call, by value.
struct Geometry {
  RetroAttention op;
  int64_t tokens, chunks, neighbours, nbr_len, chunk_size, q_offset;
  int64_t first_chunk;       // CCA, query cover: the chunk of q's first row (-1 before m - 1)
  int64_t groups_per_batch;  // groups of one batch element in this cover
  const int32_t* nbr_lens;   // (B, L, K) on the device, or nullptr
};

__device__ Slots neighbours_of_chunk(const Geometry& g, int64_t b, int64_t l) {
  Slots s;
  s.row0 = (b * g.chunks + l) * g.neighbours * g.nbr_len;
  s.slots = static_cast<int>(g.neighbours * g.nbr_len);
  s.seg = static_cast<int>(g.nbr_len);
  s.lens = g.nbr_lens == nullptr ? nullptr : g.nbr_lens + (b * g.chunks + l) * g.neighbours;
  return s;
}

__device__ Slots contiguous(int64_t row0, int64_t rows) {
  Slots s;
  s.row0 = row0;
  s.slots = static_cast<int>(rows > 0 ? rows : 0);
  s.seg = max(s.slots, 1);
  return s;
}

__device__ Group group_of(const Geometry& g, int64_t index, Cover cover) {
  const int64_t b = index / g.groups_per_batch, c = index % g.groups_per_batch;
  const int64_t m = g.chunk_size, T = g.tokens;
  Group out;
  switch (g.op) {
    case RetroAttention::ChunkedCross: {  // positions [u m + m - 1, (u + 1) m + m - 1) -> chunk u
      const int64_t u = cover == Cover::Queries ? g.first_chunk + c : c;
      const int64_t lo = max(g.q_offset, u * m + m - 1);
      const int64_t hi = min(g.q_offset + T, (u + 1) * m + m - 1);
      out.q = contiguous(b * T + lo - g.q_offset, hi - lo);
      if (u >= 0 && u < g.chunks) out.k = neighbours_of_chunk(g, b, u);
      break;
    }
    case RetroAttention::NeighbourSelf: {  // index = (b L + l) K + j
      Slots s;
      s.row0 = index * g.nbr_len;
      s.slots = s.seg = static_cast<int>(g.nbr_len);
      s.lens = g.nbr_lens == nullptr ? nullptr : g.nbr_lens + index;
      out.q = out.k = s;
      break;
    }
    case RetroAttention::NeighbourCross: {  // chunk c's neighbours -> decoder positions of chunk c
      if (c < g.chunks) out.q = neighbours_of_chunk(g, b, c);
      out.k = contiguous(b * T + c * m, min(T, (c + 1) * m) - c * m);
      break;
    }
  }
  return out;
}

// ---- element conversions and 16-byte row copies --------------------------------------------

__device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ float to_float(__half x) { return __half2float(x); }
template <typename T>
__device__ T from_float(float x);
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// ---- asynchronous copies into shared memory -------------------------------------------------

// Starts a 16-byte copy global -> shared; a slot that is not real zero-fills (reads nothing).
__device__ void copy16_async(void* shared, const void* global, bool real) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global),
               "r"(real ? 16 : 0)
               : "memory");
}

__device__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `Pending` committed groups of this thread's copies are still in flight.
template <int Pending>
__device__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

// flags[i] = whether slot first + i is real, for i < count.
__device__ void mark_real(uint8_t* flags, const Slots& s, int first, int count) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) flags[i] = s.real(first + i);
}

// Starts copying slots [first, first + kTile) of one side (head h) into a kTile x (Dh + pad) tile;
// rows whose flag (real[r], from mark_real) is 0 become zeros, so masked keys add nothing and NaN
// padding cannot leak.
template <typename T, int Dh>
__device__ void copy_tile(T* tile, const T* tensor, const Slots& s, const uint8_t* real,
                          int first, int64_t heads, int h) {
  constexpr int kVectors = Dh / 8;  // 16-byte vectors per row
  for (int i = threadIdx.x; i < kTile * kVectors; i += blockDim.x) {
    const int r = i / kVectors, c = i % kVectors;
    const T* source = real[r] ? tensor + ((s.row0 + first + r) * heads + h) * Dh + c * 8 : tensor;
    copy16_async(tile + r * (Dh + kHalfPad) + c * 8, source, real[r]);
  }
}

// Writes 16 rows of Dh floats (a warp's staged result) to slots [first, first + 16) that exist.
template <typename T, int Dh>
__device__ void store_rows(T* tensor, const float* rows, int ld, const Slots& s, int first,
                           int64_t heads, int h) {
  constexpr int kVectors = Dh / 8;
  const int lane = threadIdx.x % 32;
  for (int i = lane; i < 16 * kVectors; i += 32) {
    const int r = i / kVectors, c = i % kVectors;
    if (first + r >= s.slots) continue;
    alignas(16) T packed[8];
    for (int e = 0; e < 8; ++e) packed[e] = from_float<T>(rows[r * ld + c * 8 + e]);
    *reinterpret_cast<uint4*>(tensor + ((s.row0 + first + r) * heads + h) * Dh + c * 8) =
        *reinterpret_cast<const uint4*>(packed);
  }
}

// ---- the two warp-level products -----------------------------------------------------------

// ---- register fragments of mma.sync m16n8k16 (the forward) -----------------------------------
// A (16 x 16, row-major): lane l holds rows l/4 and l/4 + 8, columns 2(l%4) + {0, 1} and + 8.
// B (16 x 8, k-major): columns l/4, rows 2(l%4) + {0, 1} and + 8. C (16 x 8 fp32): rows l/4 and
// l/4 + 8, columns 2(l%4) + {0, 1}; two adjacent C tiles of P are one A tile of the next product.

template <typename T>
__device__ void mma_16x8x16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 tiles of 16-bit values; lane l gives the address of row l % 8 of tile l / 8.
__device__ void load_matrix_x4(uint32_t (&r)[4], const void* row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// The same, each 8 x 8 tile transposed.
__device__ void load_matrix_x4_transposed(uint32_t (&r)[4], const void* row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// Two floats as one register of two 16-bit values (lo in the low half).
template <typename T>
__device__ uint32_t pack(float lo, float hi) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// ---- WMMA products through shared memory (the backward) --------------------------------------

using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// out (16 x 64 floats) = a (16 x Depth) b^T, with b a 64 x Depth tile: scores and their gradients.
template <typename T, int Depth>
__device__ void product_abt(const T* a, int lda, const T* b, int ldb, float* out, int ldo) {
  Accumulator acc[kTile / 16];
  for (auto& f : acc) wmma::fill_fragment(f, 0.0f);
#pragma unroll
  for (int kk = 0; kk < Depth; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + kk, lda);
#pragma unroll
    for (int j = 0; j < kTile / 16; ++j) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
      wmma::load_matrix_sync(fb, b + j * 16 * ldb + kk, ldb);
      wmma::mma_sync(acc[j], fa, fb, acc[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < kTile / 16; ++j)
    wmma::store_matrix_sync(out + j * 16, acc[j], ldo, wmma::mem_row_major);
}

// acc (16 x Cols) += a (16 x 64) b, with b a 64 x Cols tile: outputs and input gradients.
template <typename T, int Cols>
__device__ void product_ab(Accumulator (&acc)[Cols / 16], const T* a, int lda, const T* b,
                           int ldb) {
#pragma unroll
  for (int kk = 0; kk < kTile; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + kk, lda);
#pragma unroll
    for (int j = 0; j < Cols / 16; ++j) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
      wmma::load_matrix_sync(fb, b + kk * ldb + j * 16, ldb);
      wmma::mma_sync(acc[j], fa, fb, acc[j]);
    }
  }
}

template <int Cols>
__device__ void stage(float* rows, int ld, Accumulator (&acc)[Cols / 16]) {
#pragma unroll
  for (int j = 0; j < Cols / 16; ++j)
    wmma::store_matrix_sync(rows + j * 16, acc[j], ld, wmma::mem_row_major);
  __syncwarp();
}

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
  int tiles;  // query tiles (forward, grad_q) or key tiles (grad_k, grad_v) per group
};

// ---- forward --------------------------------------------------------------------------------

// One CTA: a 64-slot query tile of one group and one head, against all the group's keys, in
// tiles of 64 with a running softmax. Warp w owns query rows 16w .. 16w + 15 of the tile.
template <typename T, int Dh>
__global__ void __launch_bounds__(128) forward_kernel(Geometry geo, Tensors<T> t) {
  constexpr int ld = Dh + kHalfPad;
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);
  T* k_tiles = q_tile + kTile * ld;       // two buffers
  T* v_tiles = k_tiles + 2 * kTile * ld;  // two buffers
  uint8_t* q_real = reinterpret_cast<uint8_t*>(v_tiles + 2 * kTile * ld);
  uint8_t* key_real = q_real + kTile;  // kMaxKeySlots

  const Group g = group_of(geo, blockIdx.x / t.tiles, Cover::Queries);
  const int q_first = (blockIdx.x % t.tiles) * kTile, h = blockIdx.y;
  if (q_first >= g.q.slots) return;
  const int lane = threadIdx.x % 32, row0 = (threadIdx.x / 32) * 16;
  const int quad_row = lane / 4, quad_col = 2 * (lane % 4);
  const int key_tiles = (g.k.slots + kTile - 1) / kTile;

  mark_real(q_real, g.q, q_first, kTile);
  mark_real(key_real, g.k, 0, key_tiles * kTile);
  __syncthreads();
  copy_tile<T, Dh>(q_tile, t.q, g.q, q_real, q_first, t.heads, h);
  if (key_tiles > 0) {
    copy_tile<T, Dh>(k_tiles, t.k, g.k, key_real, 0, t.heads, h);
    copy_tile<T, Dh>(v_tiles, t.v, g.k, key_real, 0, t.heads, h);
  }
  commit_copies();

  uint32_t q_frag[Dh / 16][4];
  float out[Dh / 8][4] = {};
  float top[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};  // rows quad_row, quad_row + 8
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int buffer = kt % 2;
    if (kt + 1 < key_tiles) {  // prefetch the next tile into the other buffer
      const int next = (kt + 1) * kTile;
      copy_tile<T, Dh>(k_tiles + (1 - buffer) * kTile * ld, t.k, g.k, key_real + next, next, t.heads, h);
      copy_tile<T, Dh>(v_tiles + (1 - buffer) * kTile * ld, t.v, g.k, key_real + next, next, t.heads, h);
    }
    commit_copies();
    wait_copies<1>();  // everything but the prefetch has landed
    __syncthreads();
    if (kt == 0)
#pragma unroll
      for (int kk = 0; kk < Dh / 16; ++kk)
        load_matrix_x4(q_frag[kk], q_tile + (row0 + lane % 16) * ld + kk * 16 + (lane / 16) * 8);
    const T* keys = k_tiles + buffer * kTile * ld;
    const T* values = v_tiles + buffer * kTile * ld;

    float score[kTile / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < Dh / 16; ++kk)
#pragma unroll
      for (int jp = 0; jp < kTile / 16; ++jp) {  // keys 16 jp .. 16 jp + 15
        uint32_t b[4];
        load_matrix_x4(b, keys + (16 * jp + lane % 8 + (lane / 16) * 8) * ld + kk * 16 + ((lane / 8) % 2) * 8);
        mma_16x8x16<T>(score[2 * jp], q_frag[kk], b[0], b[1]);
        mma_16x8x16<T>(score[2 * jp + 1], q_frag[kk], b[2], b[3]);
      }

    float tile_top[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool real = key_real[kt * kTile + 8 * j + quad_col + (e & 1)];
        score[j][e] = real ? score[j][e] * t.scale : -INFINITY;
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

#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {  // keys 16 kk .. 16 kk + 15
      const uint32_t a[4] = {pack<T>(score[2 * kk][0], score[2 * kk][1]),
                             pack<T>(score[2 * kk][2], score[2 * kk][3]),
                             pack<T>(score[2 * kk + 1][0], score[2 * kk + 1][1]),
                             pack<T>(score[2 * kk + 1][2], score[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < Dh / 16; ++dp) {  // output columns 16 dp .. 16 dp + 15
        uint32_t b[4];
        load_matrix_x4_transposed(b, values + (16 * kk + lane % 8 + ((lane / 8) % 2) * 8) * ld + 16 * dp + (lane / 16) * 8);
        mma_16x8x16<T>(out[2 * dp], a, b[0], b[1]);
        mma_16x8x16<T>(out[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }
  wait_copies<0>();
  __syncthreads();  // q_tile is free (and fully landed) for staging the output

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
    sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
    const int row = row0 + quad_row + 8 * r, slot = q_first + row;
    const bool attends = q_real[row] && top[r] != -INFINITY && sum[r] > 0.0f;
    inv[r] = attends ? 1.0f / sum[r] : 0.0f;
    if (lane % 4 == 0 && slot < g.q.slots)
      t.lse_out[(g.q.row0 + slot) * t.heads + h] = attends ? top[r] + logf(sum[r]) : -INFINITY;
  }
#pragma unroll
  for (int j = 0; j < Dh / 8; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      *reinterpret_cast<uint32_t*>(q_tile + (row0 + quad_row + 8 * r) * ld + 8 * j + quad_col) =
          pack<T>(out[j][2 * r] * inv[r], out[j][2 * r + 1] * inv[r]);
  __syncwarp();
  constexpr int kVectors = Dh / 8;
  for (int i = lane; i < 16 * kVectors; i += 32) {
    const int r = row0 + i / kVectors, c = i % kVectors, slot = q_first + r;
    if (slot < g.q.slots)
      *reinterpret_cast<uint4*>(t.result + ((g.q.row0 + slot) * t.heads + h) * Dh + c * 8) =
          *reinterpret_cast<const uint4*>(q_tile + r * ld + c * 8);
  }
}

// ---- backward -------------------------------------------------------------------------------

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

// Per-slot softmax statistics of a query tile: lse (-inf for slots that are not real) and delta.
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

// dS = P (dP - delta) scale for score (r, c): P from the forward's lse (0 for masked pairs).
struct ScoreGradient {
  float p, ds;
  __device__ ScoreGradient(float score, float grad_p, float lse, float delta, bool key_real,
                           float scale) {
    p = key_real && lse != -INFINITY ? __expf(score * scale - lse) : 0.0f;
    ds = p * (grad_p - delta) * scale;
  }
};

// grad_q: one CTA per query tile of a group and head, looping over the group's key tiles.
template <typename T, int Dh>
__global__ void __launch_bounds__(128) grad_q_kernel(Geometry geo, Tensors<T> t) {
  constexpr int ld = Dh + kHalfPad, ldf = (Dh > kTile ? Dh : kTile) + kFloatPad,
                ldp = kTile + kHalfPad;
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem);
  T* go_tile = q_tile + kTile * ld;
  T* k_tile = go_tile + kTile * ld;
  T* v_tile = k_tile + kTile * ld;
  T* ds_tile = v_tile + kTile * ld;
  float* scores = reinterpret_cast<float*>(ds_tile + kTile * ldp);
  float* grad_p = scores + kTile * ldf;
  float* lse = grad_p + kTile * ldf;
  float* delta = lse + kTile;
  uint8_t* q_real = reinterpret_cast<uint8_t*>(delta + kTile);
  uint8_t* key_real = q_real + kTile;  // kMaxKeySlots

  const Group g = group_of(geo, blockIdx.x / t.tiles, Cover::Queries);
  const int q_first = (blockIdx.x % t.tiles) * kTile, h = blockIdx.y;
  if (q_first >= g.q.slots) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, row0 = warp * 16;
  const int key_tiles = (g.k.slots + kTile - 1) / kTile;

  mark_real(q_real, g.q, q_first, kTile);
  mark_real(key_real, g.k, 0, key_tiles * kTile);
  load_row_stats(lse, delta, t, g.q, q_first, h);
  __syncthreads();
  copy_tile<T, Dh>(q_tile, t.q, g.q, q_real, q_first, t.heads, h);
  copy_tile<T, Dh>(go_tile, t.grad_out, g.q, q_real, q_first, t.heads, h);
  Accumulator acc[Dh / 16];
  for (auto& f : acc) wmma::fill_fragment(f, 0.0f);
  for (int kt = 0; kt < key_tiles; ++kt) {
    __syncthreads();
    copy_tile<T, Dh>(k_tile, t.k, g.k, key_real + kt * kTile, kt * kTile, t.heads, h);
    copy_tile<T, Dh>(v_tile, t.v, g.k, key_real + kt * kTile, kt * kTile, t.heads, h);
    commit_copies();
    wait_copies<0>();
    __syncthreads();
    product_abt<T, Dh>(q_tile + row0 * ld, ld, k_tile, ld, scores + row0 * ldf, ldf);
    product_abt<T, Dh>(go_tile + row0 * ld, ld, v_tile, ld, grad_p + row0 * ldf, ldf);
    __syncwarp();
    for (int e = lane; e < 16 * kTile; e += 32) {
      const int r = row0 + e / kTile, c = e % kTile;
      const ScoreGradient s(scores[r * ldf + c], grad_p[r * ldf + c], lse[r], delta[r],
                            key_real[kt * kTile + c], t.scale);
      ds_tile[r * ldp + c] = from_float<T>(s.ds);
    }
    __syncwarp();
    product_ab<T, Dh>(acc, ds_tile + row0 * ldp, ldp, k_tile, ld);
  }
  commit_copies();  // a group without keys still started its query copies
  wait_copies<0>();
  __syncwarp();
  stage<Dh>(scores + row0 * ldf, ldf, acc);
  store_rows<T, Dh>(t.result, scores + row0 * ldf, ldf, g.q, q_first + row0, t.heads, h);
}

// grad_k and grad_v: one CTA per key tile of a group and head, looping over the group's query
// tiles. Warps 0-3 own 16 key rows each of grad_v, warps 4-7 the same rows of grad_k.
template <typename T, int Dh>
__global__ void __launch_bounds__(256) grad_kv_kernel(Geometry geo, Tensors<T> t) {
  constexpr int ld = Dh + kHalfPad, ldf = (Dh > kTile ? Dh : kTile) + kFloatPad,
                ldp = kTile + kHalfPad;
  extern __shared__ __align__(128) unsigned char smem[];
  T* k_tile = reinterpret_cast<T*>(smem);
  T* v_tile = k_tile + kTile * ld;
  T* q_tile = v_tile + kTile * ld;
  T* go_tile = q_tile + kTile * ld;
  T* p_t = go_tile + kTile * ld;   // P^T (keys x queries)
  T* ds_t = p_t + kTile * ldp;     // dS^T
  float* scores_t = reinterpret_cast<float*>(ds_t + kTile * ldp);
  float* grad_p_t = scores_t + kTile * ldf;
  float* lse = grad_p_t + kTile * ldf;
  float* delta = lse + kTile;
  uint8_t* key_real = reinterpret_cast<uint8_t*>(delta + kTile);
  uint8_t* q_real = key_real + kTile;

  const Group g = group_of(geo, blockIdx.x / t.tiles, Cover::Keys);
  const int k_first = (blockIdx.x % t.tiles) * kTile, h = blockIdx.y;
  if (k_first >= g.k.slots) return;
  const int warp = threadIdx.x / 32, row0 = (warp % 4) * 16;
  const bool value_warp = warp < 4;

  mark_real(key_real, g.k, k_first, kTile);
  __syncthreads();
  copy_tile<T, Dh>(k_tile, t.k, g.k, key_real, k_first, t.heads, h);
  copy_tile<T, Dh>(v_tile, t.v, g.k, key_real, k_first, t.heads, h);
  Accumulator acc[Dh / 16];
  for (auto& f : acc) wmma::fill_fragment(f, 0.0f);
  const int query_tiles = (g.q.slots + kTile - 1) / kTile;
  for (int qt = 0; qt < query_tiles; ++qt) {
    __syncthreads();
    mark_real(q_real, g.q, qt * kTile, kTile);
    load_row_stats(lse, delta, t, g.q, qt * kTile, h);
    __syncthreads();
    copy_tile<T, Dh>(q_tile, t.q, g.q, q_real, qt * kTile, t.heads, h);
    copy_tile<T, Dh>(go_tile, t.grad_out, g.q, q_real, qt * kTile, t.heads, h);
    commit_copies();
    wait_copies<0>();
    __syncthreads();
    if (value_warp)
      product_abt<T, Dh>(k_tile + row0 * ld, ld, q_tile, ld, scores_t + row0 * ldf, ldf);
    else
      product_abt<T, Dh>(v_tile + row0 * ld, ld, go_tile, ld, grad_p_t + row0 * ldf, ldf);
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
      const int r = e / kTile, c = e % kTile;  // key r, query c
      const ScoreGradient s(scores_t[r * ldf + c], grad_p_t[r * ldf + c], lse[c], delta[c],
                            key_real[r], t.scale);
      p_t[r * ldp + c] = from_float<T>(s.p);
      ds_t[r * ldp + c] = from_float<T>(s.ds);
    }
    __syncthreads();
    if (value_warp)
      product_ab<T, Dh>(acc, p_t + row0 * ldp, ldp, go_tile, ld);  // grad_v += P^T grad_out
    else
      product_ab<T, Dh>(acc, ds_t + row0 * ldp, ldp, q_tile, ld);  // grad_k += dS^T q
  }
  commit_copies();  // a key tile without queries still started its copies
  wait_copies<0>();
  __syncthreads();
  float* staged = (value_warp ? scores_t : grad_p_t) + row0 * ldf;
  stage<Dh>(staged, ldf, acc);
  store_rows<T, Dh>(value_warp ? t.grad_v : t.grad_k, staged, ldf, g.k, k_first + row0, t.heads,
                    h);
}

// ---- host side ------------------------------------------------------------------------------

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Slots per group on each side (the widest group of the call).
int64_t max_query_slots(const RetroAttentionParams& p) {
  switch (p.op) {
    case RetroAttention::ChunkedCross: return std::min(p.chunk_size, p.tokens);
    case RetroAttention::NeighbourSelf: return p.neighbour_len;
    case RetroAttention::NeighbourCross: return p.neighbours * p.neighbour_len;
  }
  return 0;
}

int64_t max_key_slots(const RetroAttentionParams& p) {
  switch (p.op) {
    case RetroAttention::ChunkedCross: return p.neighbours * p.neighbour_len;
    case RetroAttention::NeighbourSelf: return p.neighbour_len;
    case RetroAttention::NeighbourCross: return p.chunk_size;
  }
  return 0;
}

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

size_t forward_smem(int head_dim) {
  return 5 * kTile * (head_dim + kHalfPad) * 2 + kTile + kMaxKeySlots;  // Q, 2 K, 2 V, flags
}

size_t backward_smem(int head_dim, int half_tiles, int float_tiles) {
  const size_t ld = head_dim + kHalfPad, ldf = std::max(head_dim, kTile) + kFloatPad,
               ldp = kTile + kHalfPad;
  return 4 * kTile * ld * 2 + half_tiles * kTile * ldp * 2 + float_tiles * kTile * ldf * 4 +
         2 * kTile * 4 + kTile + kMaxKeySlots;
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
  launch(forward_kernel<T, Dh>, p.batch * g.groups_per_batch, t.tiles, p.heads, 128,
         forward_smem(Dh), stream, "forward", g, t);
}

template <typename T, int Dh>
void run_backward(const RetroAttentionParams& p, const AttentionBackward& b, float* delta,
                  cudaStream_t stream) {
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
  t.tiles = static_cast<int>(ceil_div(std::max<int64_t>(max_query_slots(p), 1), kTile));
  launch(grad_q_kernel<T, Dh>, p.batch * by_query.groups_per_batch, t.tiles, p.heads, 128,
         backward_smem(Dh, 1, 2), stream, "backward (grad q)", by_query, t);
  const Geometry by_key = geometry_of(p, Cover::Keys);
  t.tiles = static_cast<int>(ceil_div(std::max<int64_t>(max_key_slots(p), 1), kTile));
  launch(grad_kv_kernel<T, Dh>, p.batch * by_key.groups_per_batch, t.tiles, p.heads, 256,
         backward_smem(Dh, 2, 2), stream, "backward (grad k, v)", by_key, t);
}

// Calls f(T*, std::integral_constant<int, Dh>) for the call's element type and head width.
template <typename F>
void dispatch(const RetroAttentionParams& p, F&& f) {
  auto with_width = [&](auto* type) {
    if (p.head_dim == 64) f(type, std::integral_constant<int, 64>{});
    else f(type, std::integral_constant<int, 128>{});
  };
  if (p.dtype == DType::BFloat16) with_width(static_cast<__nv_bfloat16*>(nullptr));
  else with_width(static_cast<__half*>(nullptr));
}

void check(const RetroAttentionParams& p, int device) {
  const std::string why = attention_unsupported(p);
  RETRO_CHECK_ARG(why.empty(), "CUDA attention: %s", why.c_str());
  const cudaError_t status = cudaSetDevice(device);
  RETRO_CHECK(status == cudaSuccess, "CUDA attention: cannot use device %d: %s", device,
              cudaGetErrorString(status));
}

}  // namespace

int attention_max_key_slots() { return kMaxKeySlots; }

std::string attention_unsupported(const RetroAttentionParams& p) {
  if (p.dtype != DType::BFloat16 && p.dtype != DType::Float16)
    return "the CUDA kernels take bfloat16 and float16";
  if (p.head_dim != 64 && p.head_dim != 128) return "the CUDA kernels take head_dim 64 or 128";
  if (p.batch < 0 || p.tokens < 0 || p.chunks < 0 || p.neighbours < 0 || p.neighbour_len < 0 ||
      p.heads <= 0)
    return "attention sizes must be non-negative and heads positive";
  if (p.op != RetroAttention::NeighbourSelf && p.chunk_size <= 0) return "chunk_size must be positive";
  if (p.q_offset < 0) return "q_offset must be non-negative";
  if (!std::isfinite(p.scale)) return "scale must be finite";
  if (max_key_slots(p) > kMaxKeySlots)
    return "at most " + std::to_string(kMaxKeySlots) + " key slots per group (K R for CCA, R, m)";
  return "";
}

void attention_forward(const RetroAttentionParams& p, const AttentionForward& f, int device,
                       uintptr_t stream) {
  check(p, device);
  dispatch(p, [&](auto* type, auto width) {
    run_forward<std::remove_pointer_t<decltype(type)>, decltype(width)::value>(
        p, f, reinterpret_cast<cudaStream_t>(stream));
  });
}

void attention_backward(const RetroAttentionParams& p, const AttentionBackward& b, float* delta,
                        int device, uintptr_t stream) {
  check(p, device);
  dispatch(p, [&](auto* type, auto width) {
    run_backward<std::remove_pointer_t<decltype(type)>, decltype(width)::value>(
        p, b, delta, reinterpret_cast<cudaStream_t>(stream));
  });
}

}  // namespace retro::cuda
