// Run-time GPU discovery for the CUDA build.
#include <cuda_runtime.h>
#include <cutlass/version.h>

#include "retro/cuda.h"
#include "retro/error.h"

namespace retro::cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" / "no device" error
    return 0;
  }
  return count;
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  cudaError_t status = cudaGetDeviceProperties(&prop, device);
  RETRO_CHECK(status == cudaSuccess, "cannot query CUDA device %d: %s", device,
              cudaGetErrorString(status));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
}

std::string cutlass_version() {
  return std::to_string(CUTLASS_MAJOR) + "." + std::to_string(CUTLASS_MINOR) + "." +
         std::to_string(CUTLASS_PATCH);
}

}  // namespace retro::cuda
