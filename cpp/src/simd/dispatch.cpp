// Picks the kernel set: the best the CPU supports, or the one named by RETRO_SIMD.
#include <algorithm>

#include "retro/error.h"
#include "simd/kernels.h"
#include "simd/level_choice.h"

namespace retro::simd {
namespace scalar { extern const Kernels table; }
#if defined(RETRO_HAVE_X86_KERNELS)
namespace avx2 { extern const Kernels table; }
namespace avx512 { extern const Kernels table; }
#endif

const Kernels& kernels_for(SimdLevel level) {
#if defined(RETRO_HAVE_X86_KERNELS)
  if (level == SimdLevel::Avx512) return avx512::table;
  if (level == SimdLevel::Avx2) return avx2::table;
#endif
  (void)level;
  return scalar::table;
}

size_t packed_size(idx_t n, int k) {
  return static_cast<size_t>((n + kPanel - 1) / kPanel) * k * kPanel;
}

void pack_panels(idx_t n, int k, const float* B, idx_t ldb, float* packed) {
  constexpr int kDepth = 16;  // a 32 x 16 tile: rows of B read in runs, the panel written in runs
  for (idx_t p = 0; p * kPanel < n; ++p) {
    float* panel = packed + p * k * kPanel;
    const int cols = static_cast<int>(std::min<idx_t>(kPanel, n - p * kPanel));
    for (int t0 = 0; t0 < k; t0 += kDepth) {
      const int t1 = std::min(k, t0 + kDepth);
      for (int j = 0; j < cols; ++j) {
        const float* column = B + (p * kPanel + j) * ldb;
        for (int t = t0; t < t1; ++t) panel[t * kPanel + j] = column[t];
      }
      for (int t = t0; t < t1; ++t)
        for (int j = cols; j < kPanel; ++j) panel[t * kPanel + j] = 0.0f;
    }
  }
}

}  // namespace retro::simd

namespace retro {

SimdLevel best_simd_level() {
#if defined(RETRO_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vbmi"))
    return SimdLevel::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::Avx2;
#endif
  return SimdLevel::Scalar;
}

namespace {
simd::LevelChoice<SimdLevel>& simd_choice() {
  static simd::LevelChoice<SimdLevel> choice("SIMD level", "RETRO_SIMD", best_simd_level,
                                             parse_simd_level, simd_level_name);
  return choice;
}
}  // namespace

SimdLevel active_simd_level() { return simd_choice().get(); }

void set_simd_level(SimdLevel level) { simd_choice().set(level); }

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Avx2: return "avx2";
    default: return "scalar";
  }
}

SimdLevel parse_simd_level(const std::string& name) {
  if (name == "scalar") return SimdLevel::Scalar;
  if (name == "avx2") return SimdLevel::Avx2;
  if (name == "avx512") return SimdLevel::Avx512;
  throw Error(ErrorKind::InvalidArgument,
              "unknown SIMD level '" + name + "' (expected scalar, avx2 or avx512)");
}

namespace simd {
const Kernels& kernels() { return kernels_for(active_simd_level()); }
}  // namespace simd

}  // namespace retro
