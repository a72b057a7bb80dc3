// The avx512 build of the CPU kernels (flags set in CMakeLists.txt).
#define RETRO_SIMD_NAMESPACE avx512
#include "simd/kernels.inc"
