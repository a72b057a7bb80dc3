#include "retro/rotary.h"

#include <omp.h>

#include <cmath>
#include <vector>

#include "attention/bfloat16.h"
#include "retro/error.h"

namespace retro {
namespace {

template <typename T>
void rotate(const RotaryParams& p, const int64_t* position, const T* x, T* out) {
  using A = Accum<T>;
  const idx_t half = p.head_dim / 2;
  // cos and sin of every (position, pair), computed as apply_rope does: in A
  std::vector<A> cos_table(p.positions * half), sin_table(p.positions * half);
  for (idx_t i = 0; i < half; ++i) {
    const A inv_freq = std::pow(static_cast<A>(p.base),
                                -(static_cast<A>(2 * i) / static_cast<A>(p.head_dim)));
    for (idx_t n = 0; n < p.positions; ++n) {
      const A angle = static_cast<A>(position[n]) * inv_freq;
      cos_table[n * half + i] = std::cos(angle);
      sin_table[n * half + i] = std::sin(angle);
    }
  }
  const idx_t rows = p.outer * p.positions;
#pragma omp parallel for schedule(static)
  for (idx_t row = 0; row < rows; ++row) {
    const A* c = cos_table.data() + (row % p.positions) * half;
    const A* s = sin_table.data() + (row % p.positions) * half;
    for (idx_t h = 0; h < p.heads; ++h) {
      const idx_t base = (row * p.heads + h) * p.head_dim;
      for (idx_t i = 0; i < half; ++i) {
        const A x1 = widen(x[base + i]), x2 = widen(x[base + half + i]);
        out[base + i] = narrow<T>(x1 * c[i] - x2 * s[i]);
        out[base + half + i] = narrow<T>(x1 * s[i] + x2 * c[i]);
      }
    }
  }
}

}  // namespace

void rotate_positions(const RotaryParams& p, const int64_t* position, const void* x, void* out) {
  RETRO_CHECK_ARG(p.outer >= 0 && p.positions >= 0 && p.heads >= 0 && p.head_dim >= 0 &&
                      p.head_dim % 2 == 0,
                  "need non-negative sizes and an even head_dim, got (%lld, %lld, %lld, %lld)",
                  static_cast<long long>(p.outer), static_cast<long long>(p.positions),
                  static_cast<long long>(p.heads), static_cast<long long>(p.head_dim));
  RETRO_CHECK_ARG(p.base > 0, "rotary base must be > 0, got %g", p.base);
  switch (p.dtype) {
    case DType::Float64:
      return rotate(p, position, static_cast<const double*>(x), static_cast<double*>(out));
    case DType::BFloat16:
      return rotate(p, position, static_cast<const bfloat16*>(x), static_cast<bfloat16*>(out));
    case DType::Float32:
      return rotate(p, position, static_cast<const float*>(x), static_cast<float*>(out));
    default:
      RETRO_THROW_ARG("rotary positions take float32, float64 or bfloat16 on the CPU");
  }
}

}  // namespace retro
