// Cross-entropy of a language model's logits, one row per token: the loss of a training step
// without the (rows, vocab) log-probabilities that log_softmax + nll_loss write and read back.
// The forward pass reads each row once; the backward pass reads it once and writes its gradient
// once. Rows whose target is ignore_index get loss 0 and a zero gradient.
#pragma once
#include <cstdint>

#include "retro/attention.h"  // DType
#include "retro/types.h"

namespace retro {

struct CrossEntropyParams {
  DType dtype = DType::Float32;  // of the logits and their gradient: float32, float64, bfloat16
  idx_t rows = 0, vocab = 0;
  int64_t ignore_index = -100;
};

// logits (rows, vocab), targets (rows) in [0, vocab) or ignore_index -> lse (rows) =
// log sum_j exp(logits[r, j]) and loss (rows) = lse - logits[r, target] (0 where ignored); lse and
// loss are double for float64 logits, else float. Throws for a target outside [0, vocab).
void cross_entropy_forward(const CrossEntropyParams& p, const void* logits, const int64_t* targets,
                           void* lse, void* loss);

// grad (rows, vocab), the logits' dtype = grad_loss[r] * (softmax(logits[r]) - onehot(target)),
// 0 where ignored; lse and grad_loss (rows) as the forward pass's lse and loss.
void cross_entropy_backward(const CrossEntropyParams& p, const void* logits,
                            const int64_t* targets, const void* lse, const void* grad_loss,
                            void* grad);

}  // namespace retro
