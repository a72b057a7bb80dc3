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

// Which kernel runs the bfloat16 matrix products of the attention ops: none (bfloat16 widened to
// float32 and run on the SIMD level's float32 GEMM), AVX512-BF16 dot products, or AMX tiles. Both
// keep float32 accumulators. Chosen once: amx where the CPU and the OS allow it, else none (the
// AVX512-BF16 kernel was slower than none where measured); RETRO_BF16=none|avx512bf16|amx forces
// one. Each level needs the ones below it.
enum class Bf16Kernel { None = 0, Avx512Bf16 = 1, Amx = 2 };

Bf16Kernel best_bf16_kernel();    // what this CPU (and OS) supports
Bf16Kernel active_bf16_kernel();  // what is used now
void set_bf16_kernel(Bf16Kernel kernel);  // throws if the CPU lacks it
const char* bf16_kernel_name(Bf16Kernel kernel);
Bf16Kernel parse_bf16_kernel(const std::string& name);  // throws on an unknown name

}  // namespace retro
