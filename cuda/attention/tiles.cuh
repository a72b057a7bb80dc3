// Tiles of 64 slots x Dh in shared memory: filled by cp.async (16 bytes per copy; rows that are
// not real slots zero-filled, so masked keys add nothing and NaN padding cannot leak), and a
// warp's 16 result rows staged there and written back with 16-byte stores.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "attention/groups.cuh"

namespace retro::cuda {
namespace {

constexpr int kHalfPad = 8;  // 16-bit elements of padding per shared row: conflict-free ldmatrix

template <int Dh>
constexpr int kRowStride = Dh + kHalfPad;  // elements per shared row of a tile

__device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ T from_float(float x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return __float2half_rn(x);
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

// Starts copying slots [first, first + kTile) of one side (head h) into a tile; rows whose flag
// real[r] (from mark_real) is 0 become zeros.
template <typename T, int Dh>
__device__ void copy_tile(T* tile, const T* tensor, const Slots& s, const uint8_t* real,
                          int first, int64_t heads, int h) {
  constexpr int kVectors = Dh / 8;  // 16-byte vectors per row
  for (int i = threadIdx.x; i < kTile * kVectors; i += blockDim.x) {
    const int r = i / kVectors, c = i % kVectors;
    const T* source = real[r] ? tensor + ((s.row0 + first + r) * heads + h) * Dh + c * 8 : tensor;
    copy16_async(tile + r * kRowStride<Dh> + c * 8, source, real[r]);
  }
}

// Stores a warp's 16 x Dh accumulator (mma.sync layout, see fragments.cuh) as T into rows
// [row0, row0 + 16) of a tile, rows row0 + lane/4 scaled by scale[0] and row0 + lane/4 + 8 by
// scale[1].
template <typename T, int Dh>
__device__ void stage_rows(T* tile, int row0, const float (&acc)[Dh / 8][4],
                           const float (&scale)[2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < Dh / 8; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      *reinterpret_cast<uint32_t*>(tile + (row0 + lane / 4 + 8 * r) * kRowStride<Dh> + 8 * j +
                                   2 * (lane % 4)) =
          pack<T>(acc[j][2 * r] * scale[r], acc[j][2 * r + 1] * scale[r]);
  __syncwarp();
}

// Copies tile rows [row0, row0 + 16) to the tensor rows of slots first + row that exist.
template <typename T, int Dh>
__device__ void write_rows(T* tensor, const T* tile, int row0, const Slots& s, int first,
                           int64_t heads, int h) {
  constexpr int kVectors = Dh / 8;
  for (int i = threadIdx.x % 32; i < 16 * kVectors; i += 32) {
    const int r = row0 + i / kVectors, c = i % kVectors, slot = first + r;
    if (slot < s.slots)
      *reinterpret_cast<uint4*>(tensor + ((s.row0 + slot) * heads + h) * Dh + c * 8) =
          *reinterpret_cast<const uint4*>(tile + r * kRowStride<Dh> + c * 8);
  }
  __syncwarp();
}

}  // namespace
}  // namespace retro::cuda
