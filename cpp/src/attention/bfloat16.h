// bfloat16 storage (torch.bfloat16's bits): the top half of a float32. Computation is in float.
#pragma once
#include <cstdint>
#include <cstring>

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

}  // namespace retro
