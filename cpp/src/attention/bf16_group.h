// One (group, head) of the grouped attention (attention/grouped_attention.h) in bfloat16 on the
// bf16 products (attention/bf16_matmul.h): every product in bfloat16 with float32 accumulation,
// the softmax and its gradient in float32, and the probabilities and score gradients rounded to
// bfloat16 as product operands (as PyTorch's bfloat16 flash-attention kernels round them).
#pragma once
#include "attention/grouped_attention.h"
#include "retro/simd.h"

namespace retro {

// Writes the output rows and lse of the group's queries for head h (kernel != None).
void bf16_group_forward(Bf16Kernel kernel, const AttentionGroup& group, idx_t h,
                        const AttentionLayout& layout, const bfloat16* q, const bfloat16* k,
                        const bfloat16* v, bfloat16* out, float* lse);

// Writes the gradient rows of the group's queries and keys for head h (kernel != None).
void bf16_group_backward(Bf16Kernel kernel, const AttentionGroup& group, idx_t h,
                         const AttentionLayout& layout, const bfloat16* q, const bfloat16* k,
                         const bfloat16* v, const bfloat16* out, const float* lse,
                         const bfloat16* grad_out, bfloat16* grad_q, bfloat16* grad_k,
                         bfloat16* grad_v);

}  // namespace retro
