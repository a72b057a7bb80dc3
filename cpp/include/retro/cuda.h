// What the CUDA part of the build (cuda/) offers the layers above. Only linked into builds made
// with a CUDA compiler (RETRO_WITH_CUDA); the CUDA runtime is linked statically, so a CUDA build
// imports and runs its CPU paths on machines without a GPU or driver.
#pragma once
#include <cstdint>
#include <string>

#include "retro/attention.h"
#include "retro/ivf_pq_cuda.h"  // IVF-PQ search and encoding on the GPU

namespace retro::cuda {

int device_count();                     // 0 when no usable GPU or driver is present
std::string device_name(int device);    // e.g. "NVIDIA H100 80GB HBM3 (sm_90)"
std::string cutlass_version();          // the CUTLASS headers the kernels were compiled with

// RETRO's attentions on the GPU (cuda/attention.cu): bfloat16 or float16, head_dim 64 or 128,
// lse float32; pointers are device memory of `device`, work is queued on `stream` (a
// cudaStream_t). nbr_lens stays on the device: the Python ops refuse lengths outside [0, R] in
// eager calls; the kernels clamp them.
std::string attention_unsupported(const RetroAttentionParams& params);  // "" when supported
int attention_max_key_slots();  // the widest group: K R for CCA, R for self, m for cross
void attention_forward(const RetroAttentionParams& params, const AttentionForward& tensors,
                       int device, uintptr_t stream);
// Whether the backward may run grad q, k and v in one kernel where that covers every row (CCA in
// training, self-attention with R <= 64; head_dim 64); default on. Else two kernels.
void set_fused_backward(bool enabled);
// delta: a (query rows, H) float32 scratch buffer.
void attention_backward(const RetroAttentionParams& params, const AttentionBackward& tensors,
                        float* delta, int device, uintptr_t stream);

}  // namespace retro::cuda
