// bfloat16 storage (torch.bfloat16's bits): the top half of a float32. Computation is in float:
// Accum<T> is what a kernel on T accumulates in, widen() and narrow<T>() convert to and from it.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace retro {

struct bfloat16 {
  uint16_t bits;
};

inline float to_float(bfloat16 x) {
  const uint32_t wide = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof(f));
  return f;
}

// Round to nearest, ties to even (as torch); NaN stays NaN.
inline bfloat16 to_bfloat16(float f) {
  uint32_t wide;
  std::memcpy(&wide, &f, sizeof(wide));
  if ((wide & 0x7fffffffu) > 0x7f800000u) return bfloat16{static_cast<uint16_t>((wide >> 16) | 0x40)};
  wide += 0x7fffu + ((wide >> 16) & 1u);
  return bfloat16{static_cast<uint16_t>(wide >> 16)};
}

// The accumulation type: float for float and bfloat16, double for double.
template <typename T>
using Accum = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline float widen(float x) { return x; }
inline double widen(double x) { return x; }
inline float widen(bfloat16 x) { return to_float(x); }

template <typename T>
T narrow(Accum<T> x) {
  if constexpr (std::is_same_v<T, bfloat16>)
    return to_bfloat16(x);
  else
    return x;
}

}  // namespace retro
