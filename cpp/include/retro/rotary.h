// Rotary positions (RoPE, rotate-half form) applied in one pass: what retro.ops.rotary.apply_rope
// computes with PyTorch's elementwise ops, for the attention ops' queries and keys on the CPU.
#pragma once
#include <cstdint>

#include "retro/attention.h"  // DType
#include "retro/types.h"

namespace retro {

struct RotaryParams {
  DType dtype = DType::Float32;  // of x and out: float32, float64 or bfloat16
  idx_t outer = 0;               // leading rows: x is (outer, positions, heads, head_dim)
  idx_t positions = 0, heads = 0, head_dim = 0;  // head_dim even
  double base = 10000.0;         // frequency of pair i: base^(-2i / head_dim)
};

// out = x rotated by the angles position[n] * base^(-2i / head_dim) of each pair (i, i + Dh/2)
// (negative positions rotate back); out may be x. Angles and rotation in float32 for float32 and
// bfloat16 (as apply_rope), float64 for float64.
void rotate_positions(const RotaryParams& params, const int64_t* position, const void* x,
                      void* out);

}  // namespace retro
