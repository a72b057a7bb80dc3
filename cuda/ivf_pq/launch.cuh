// Launches one IVF-PQ kernel with its dynamic shared memory, and turns a refusal or a launch error
// into an exception naming `what`.
#pragma once
#include <cuda_runtime.h>

#include "retro/error.h"
#include "retro/types.h"

namespace retro::cuda::ivfpq {

template <typename Kernel, typename Args>
inline void launch(Kernel kernel, idx_t blocks_x, int blocks_y, int threads, size_t smem,
                   cudaStream_t stream, const char* what, const Args& args) {
  if (blocks_x <= 0) return;
  RETRO_CHECK(blocks_x < (idx_t{1} << 31), "CUDA IVF-PQ %s: %lld blocks are too many", what,
              static_cast<long long>(blocks_x));
  cudaError_t status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  RETRO_CHECK(status == cudaSuccess, "CUDA IVF-PQ %s: %zu bytes of shared memory refused: %s",
              what, smem, cudaGetErrorString(status));
  kernel<<<dim3(static_cast<unsigned>(blocks_x), blocks_y), threads, smem, stream>>>(args);
  status = cudaGetLastError();
  RETRO_CHECK(status == cudaSuccess, "CUDA IVF-PQ %s failed: %s", what, cudaGetErrorString(status));
}

}  // namespace retro::cuda::ivfpq
