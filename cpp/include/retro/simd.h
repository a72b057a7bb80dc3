// Which SIMD kernels the CPU paths use: chosen once from the CPU's features, overridable with the
// environment variable RETRO_SIMD=scalar|avx2|avx512 (so every path can be tested on one machine).
#pragma once
#include <string>

namespace retro {

enum class SimdLevel { Scalar = 0, Avx2 = 1, Avx512 = 2 };

SimdLevel best_simd_level();           // what this CPU supports
SimdLevel active_simd_level();         // what is used now (RETRO_SIMD or the best)
void set_simd_level(SimdLevel level);  // throws if the CPU lacks it
const char* simd_level_name(SimdLevel level);
SimdLevel parse_simd_level(const std::string& name);  // throws on an unknown name

}  // namespace retro
