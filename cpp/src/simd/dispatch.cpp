// The run-time ISA dispatch, one mechanism for both choices of retro/simd.h: the CPU's features,
// read once, give the best SIMD level (the float32 kernel set) and the best bfloat16 kernel; the
// environment (RETRO_SIMD, RETRO_BF16) or set_*() override either (simd/level_choice.h).
#include <algorithm>
#include <string>

#include "retro/error.h"
#include "retro/simd.h"
#include "simd/kernels.h"
#include "simd/level_choice.h"

#if defined(RETRO_HAVE_X86_KERNELS)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
namespace {

// What the dispatch needs to know of the CPU.
struct CpuFeatures {
  bool avx2 = false;         // AVX2 and FMA
  bool avx512 = false;       // AVX-512 F, BW, VL, DQ and VBMI
  bool avx512_bf16 = false;  // AVX-512 F, BW, VL and BF16
  bool amx_bf16 = false;     // AMX tiles and BF16 (the OS must still grant their state)
};

#if defined(RETRO_HAVE_X86_KERNELS)
bool cpuid_bit(unsigned leaf, unsigned subleaf, int reg, int bit) {
  unsigned r[4] = {};
  if (!__get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
}
constexpr int kEax = 0, kEdx = 3;

CpuFeatures detect_features() {
  __builtin_cpu_init();  // the AVX-512 checks include the OS's saving of the zmm state
  CpuFeatures f;
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512_core = __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  f.avx512 = avx512_core && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vbmi");
  f.avx512_bf16 = avx512_core && cpuid_bit(7, 1, kEax, 5);
  f.amx_bf16 = cpuid_bit(7, 0, kEdx, 24) && cpuid_bit(7, 0, kEdx, 22);
  return f;
}

// Linux hands out the 8 KiB tile state only to processes that ask for it (once, for all threads);
// a refusal (an older kernel, a seccomp filter) means no AMX.
bool amx_permitted() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
#else
CpuFeatures detect_features() { return {}; }
bool amx_permitted() { return false; }
#endif

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect_features();
  return features;
}

constexpr const char* kSimdNames[] = {"scalar", "avx2", "avx512"};
constexpr const char* kBf16Names[] = {"none", "avx512bf16", "amx"};

simd::LevelChoice<SimdLevel, 3>& simd_choice() {
  static simd::LevelChoice<SimdLevel, 3> choice("SIMD level", "RETRO_SIMD", kSimdNames,
                                                best_simd_level(), best_simd_level());
  return choice;
}

// AVX512-BF16 is only taken on request: on a Sapphire Rapids core vdpbf16ps does no more
// multiply-adds per cycle than the float32 FMAs, and bench/ops.py measured it 5-15% slower than
// none at the bench shapes.
simd::LevelChoice<Bf16Kernel, 3>& bf16_choice() {
  static simd::LevelChoice<Bf16Kernel, 3> choice(
      "bf16 kernel", "RETRO_BF16", kBf16Names, best_bf16_kernel(),
      best_bf16_kernel() == Bf16Kernel::Amx ? Bf16Kernel::Amx : Bf16Kernel::None);
  return choice;
}

}  // namespace

SimdLevel best_simd_level() {
  const CpuFeatures& f = cpu_features();
  return f.avx512 ? SimdLevel::Avx512 : f.avx2 ? SimdLevel::Avx2 : SimdLevel::Scalar;
}
SimdLevel active_simd_level() { return simd_choice().get(); }
void set_simd_level(SimdLevel level) { simd_choice().set(level); }
const char* simd_level_name(SimdLevel level) { return kSimdNames[static_cast<int>(level)]; }
SimdLevel parse_simd_level(const std::string& name) { return simd_choice().parse(name); }

Bf16Kernel best_bf16_kernel() {
  const CpuFeatures& f = cpu_features();
  // Asks for the AMX state once, and only when the bf16 kernels are first chosen.
  static const Bf16Kernel best = !f.avx512_bf16                ? Bf16Kernel::None
                                 : f.amx_bf16 && amx_permitted() ? Bf16Kernel::Amx
                                                                 : Bf16Kernel::Avx512Bf16;
  return best;
}
Bf16Kernel active_bf16_kernel() { return bf16_choice().get(); }
void set_bf16_kernel(Bf16Kernel kernel) { bf16_choice().set(kernel); }
const char* bf16_kernel_name(Bf16Kernel kernel) { return kBf16Names[static_cast<int>(kernel)]; }
Bf16Kernel parse_bf16_kernel(const std::string& name) { return bf16_choice().parse(name); }

namespace simd {
const Kernels& kernels() { return kernels_for(active_simd_level()); }
}  // namespace simd

}  // namespace retro
