// RETRO's three attentions on the CPU: chunked cross-attention (CCA) of the decoder, and the
// neighbour encoder's self- and cross-attention. Row-major contiguous tensors, raw pointers; the
// caller owns all memory (the torch ops in python/retro/ops/ wrap these).
//
// Shapes: B batch, T decoder tokens, H heads, Dh head width, L chunks, K neighbours per chunk,
// R tokens per neighbour, m = chunk_size. nbr_lens (B, L, K) int32 in [0, R] (nullptr = all R).
//   ChunkedCross:   q (B, T, H, Dh) at absolute positions q_offset + t; k, v (B, L, K, R, H, Dh).
//                   Position p >= m - 1 attends to the real keys of all neighbours of chunk
//                   u = (p - (m - 1)) / m when u < L.
//   NeighbourSelf:  q, k, v (B, L, K, R, H, Dh); token r < len attends to tokens < len of its
//                   own neighbour.
//   NeighbourCross: q (B, L, K, R, H, Dh); k, v (B, T, H, Dh); token r < len of a neighbour of
//                   chunk l attends to decoder positions [l m, min((l + 1) m, T)).
// Output rows with nothing to attend to are zero. lse holds, per query row and head, the log of
// the softmax denominator (scaled scores), which the backward pass reuses; -inf where unused.
#pragma once
#include <cstdint>

#include "retro/types.h"

namespace retro {

enum class RetroAttention { ChunkedCross, NeighbourSelf, NeighbourCross };

// float32 and bfloat16 compute in float32; float64 in float64 (for gradcheck). With a bf16 kernel
// (retro/simd.h: Bf16Kernel) bfloat16 runs its products on bfloat16 operands with float32
// accumulation: the forward rounds the softmax numerators to bfloat16 (as PyTorch's SDPA does),
// the backward passes P and dS as two bfloat16 terms each (float32-path accuracy). float16 is for
// the CUDA kernels only (retro/cuda.h).
enum class DType { Float32, Float64, BFloat16, Float16 };

struct RetroAttentionParams {
  RetroAttention op = RetroAttention::ChunkedCross;
  DType dtype = DType::Float32;
  idx_t batch = 0, tokens = 0, heads = 0, head_dim = 0;  // B, T, H, Dh
  idx_t chunks = 0, neighbours = 0, neighbour_len = 0;   // L, K, R
  idx_t chunk_size = 64;                                 // m
  idx_t q_offset = 0;                                    // absolute position of q's first row
  double scale = 0.0;                                    // scores = scale * <q, k>
  const int32_t* nbr_lens = nullptr;                     // (B, L, K) or nullptr
};

// lse: float64 for float64 tensors, float32 otherwise; (q rows, H).
struct AttentionForward {
  const void* q;
  const void* k;
  const void* v;
  void* out;  // q's shape
  void* lse;
};

struct AttentionBackward {
  const void* q;
  const void* k;
  const void* v;
  const void* out;       // the forward's output
  const void* lse;       // the forward's lse
  const void* grad_out;  // q's shape
  void* grad_q;          // q's shape
  void* grad_k;          // k's shape
  void* grad_v;          // v's shape
};

// The one check of params for the CPU and CUDA paths: throws (InvalidArgument) unless the sizes,
// chunk_size, q_offset and scale are valid and, where nbr_lens is host memory (lens_on_host: the
// CPU path), every length lies in [0, R].
void check_attention_params(const RetroAttentionParams& params, bool lens_on_host);

void attention_forward(const RetroAttentionParams& params, const AttentionForward& tensors);
void attention_backward(const RetroAttentionParams& params, const AttentionBackward& tensors);

// Rows of the query-side and key-side tensors (each row holds H heads of Dh values).
idx_t query_rows(const RetroAttentionParams& params);
idx_t key_rows(const RetroAttentionParams& params);

}  // namespace retro
