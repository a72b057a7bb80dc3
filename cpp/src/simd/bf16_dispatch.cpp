// Picks the kernel of the bfloat16 attention products (retro/simd.h): AMX if the CPU has its tiles
// and Linux lets this process use them, else none; RETRO_BF16 overrides. AVX512-BF16 is only
// taken on request: on a Sapphire Rapids core vdpbf16ps does no more multiply-adds per cycle than
// the float32 FMAs, and bench/ops.py measured it 5-15% slower than none at the bench shapes.
#include <string>

#include "retro/error.h"
#include "retro/simd.h"
#include "simd/level_choice.h"

#if defined(RETRO_HAVE_X86_KERNELS)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace retro {
namespace {

#if defined(RETRO_HAVE_X86_KERNELS)
bool cpuid_bit(unsigned leaf, unsigned subleaf, int reg, int bit) {
  unsigned r[4] = {};
  if (!__get_cpuid_count(leaf, subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
}
constexpr int kEax = 0, kEdx = 3;

bool has_avx512_bf16() {
  __builtin_cpu_init();  // the AVX-512 checks include the OS's saving of the zmm state
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && cpuid_bit(7, 1, kEax, 5);
}

// Linux hands out the 8 KiB tile state only to processes that ask for it (once, for all threads);
// a refusal (an older kernel, a seccomp filter) means no AMX.
bool amx_permitted() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

bool has_amx_bf16() {
  return cpuid_bit(7, 0, kEdx, 24) && cpuid_bit(7, 0, kEdx, 22) && amx_permitted();
}
#endif

Bf16Kernel detect_bf16_kernel() {
#if defined(RETRO_HAVE_X86_KERNELS)
  if (has_avx512_bf16()) return has_amx_bf16() ? Bf16Kernel::Amx : Bf16Kernel::Avx512Bf16;
#endif
  return Bf16Kernel::None;
}

Bf16Kernel preferred_bf16_kernel() {
  return best_bf16_kernel() == Bf16Kernel::Amx ? Bf16Kernel::Amx : Bf16Kernel::None;
}

simd::LevelChoice<Bf16Kernel>& bf16_choice() {
  static simd::LevelChoice<Bf16Kernel> choice("bf16 kernel", "RETRO_BF16", best_bf16_kernel,
                                              parse_bf16_kernel, bf16_kernel_name,
                                              preferred_bf16_kernel);
  return choice;
}

}  // namespace

Bf16Kernel best_bf16_kernel() {
  static const Bf16Kernel best = detect_bf16_kernel();  // asks for the AMX state once
  return best;
}

Bf16Kernel active_bf16_kernel() { return bf16_choice().get(); }

void set_bf16_kernel(Bf16Kernel kernel) { bf16_choice().set(kernel); }

const char* bf16_kernel_name(Bf16Kernel kernel) {
  switch (kernel) {
    case Bf16Kernel::Amx: return "amx";
    case Bf16Kernel::Avx512Bf16: return "avx512bf16";
    default: return "none";
  }
}

Bf16Kernel parse_bf16_kernel(const std::string& name) {
  if (name == "none") return Bf16Kernel::None;
  if (name == "avx512bf16") return Bf16Kernel::Avx512Bf16;
  if (name == "amx") return Bf16Kernel::Amx;
  throw Error(ErrorKind::InvalidArgument,
              "unknown bf16 kernel '" + name + "' (expected none, avx512bf16 or amx)");
}

}  // namespace retro
