// The scalar build of the CPU kernels (flags set in CMakeLists.txt).
#define RETRO_SIMD_NAMESPACE scalar
#include "simd/kernels.inc"
