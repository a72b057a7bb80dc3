// Tensor-core products of one warp with mma.sync m16n8k16 (bf16 or fp16 in, fp32 accumulate),
// operands from registers and shared tiles (ldmatrix). Layouts, for lane l:
//   A (16 x 16, row-major): rows l/4 and l/4 + 8, columns 2(l%4) + {0, 1} and those + 8;
//   B (16 x 8): column l/4, rows 2(l%4) + {0, 1} and those + 8;
//   C (16 x 8, fp32) acc[j][e]: row l/4 + 8(e/2), column 8j + 2(l%4) + (e&1).
// Two adjacent C tiles hold exactly the values of one A tile, so probabilities and score
// gradients feed the next product from registers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "attention/tiles.cuh"

namespace retro::cuda {
namespace {

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
               : "r"(address)
               : "memory");
}

// The same, each 8 x 8 tile transposed.
__device__ void load_matrix_x4_transposed(uint32_t (&r)[4], const void* row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// A fragments of the 16 x Width tile rows starting at `rows`.
template <typename T, int Width>
__device__ void load_rows(uint32_t (&a)[Width / 16][4], const T* rows) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < Width / 16; ++kk)
    load_matrix_x4(a[kk], rows + (lane % 16) * kRowStride<Width> + kk * 16 + (lane / 16) * 8);
}

// acc (16 x N) += a (16 x Dh) b^T, b the N x Dh tile rows starting at `b`: scores and the
// gradients of the probabilities.
template <typename T, int Dh, int N>
__device__ void rows_times_tile(float (&acc)[N / 8][4], const uint32_t (&a)[Dh / 16][4],
                                const T* b) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < Dh / 16; ++kk)
#pragma unroll
    for (int jp = 0; jp < N / 16; ++jp) {  // b rows 16 jp .. 16 jp + 15
      uint32_t f[4];
      load_matrix_x4(f, b + (16 * jp + lane % 8 + (lane / 16) * 8) * kRowStride<Dh> + kk * 16 +
                            ((lane / 8) % 2) * 8);
      mma_16x8x16<T>(acc[2 * jp], a[kk], f[0], f[1]);
      mma_16x8x16<T>(acc[2 * jp + 1], a[kk], f[2], f[3]);
    }
}

// acc (16 x Dh) += a (16 x N, A fragments) b, b the N x Dh tile rows starting at `b`.
template <typename T, int Dh, int N>
__device__ void frags_times_tile(float (&acc)[Dh / 8][4], const uint32_t (&a)[N / 16][4],
                                 const T* b) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk)  // b rows 16 kk .. 16 kk + 15
#pragma unroll
    for (int dp = 0; dp < Dh / 16; ++dp) {  // output columns 16 dp .. 16 dp + 15
      uint32_t f[4];
      load_matrix_x4_transposed(f, b + (16 * kk + lane % 8 + ((lane / 8) % 2) * 8) * kRowStride<Dh> +
                                       16 * dp + (lane / 16) * 8);
      mma_16x8x16<T>(acc[2 * dp], a[kk], f[0], f[1]);
      mma_16x8x16<T>(acc[2 * dp + 1], a[kk], f[2], f[3]);
    }
}

// acc (16 x Dh) += p (16 x N, C layout, rounded to T) b, b the N x Dh tile rows starting at `b`:
// outputs and the gradients of q, k and v.
template <typename T, int Dh, int N>
__device__ void probs_times_tile(float (&acc)[Dh / 8][4], const float (&p)[N / 8][4],
                                 const T* b) {
  uint32_t a[N / 16][4];
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    a[kk][0] = pack<T>(p[2 * kk][0], p[2 * kk][1]);
    a[kk][1] = pack<T>(p[2 * kk][2], p[2 * kk][3]);
    a[kk][2] = pack<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[kk][3] = pack<T>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
  }
  frags_times_tile<T, Dh, N>(acc, a, b);
}

}  // namespace
}  // namespace retro::cuda
