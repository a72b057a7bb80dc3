// The avx2 build of the CPU kernels (flags set in CMakeLists.txt).
#define RETRO_SIMD_NAMESPACE avx2
#include "simd/kernels.inc"
