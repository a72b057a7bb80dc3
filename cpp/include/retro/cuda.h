// What the CUDA part of the build (cuda/) offers the layers above. Only linked into builds made
// with a CUDA compiler (RETRO_WITH_CUDA); the CUDA runtime is linked statically, so a CUDA build
// imports and runs its CPU paths on machines without a GPU or driver.
#pragma once
#include <string>

namespace retro::cuda {

int device_count();                     // 0 when no usable GPU or driver is present
std::string device_name(int device);    // e.g. "NVIDIA H100 80GB HBM3 (sm_90)"
std::string cutlass_version();          // the CUTLASS headers the kernels were compiled with

}  // namespace retro::cuda
