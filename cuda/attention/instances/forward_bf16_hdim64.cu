// Written by cuda/attention/generate_instances.py: the forward of the attention kernels for
// __nv_bfloat16, head_dim 64.
#include "attention/run.cuh"

namespace retro::cuda {
template void run_forward<__nv_bfloat16, 64>(const RetroAttentionParams&, const AttentionForward&, cudaStream_t);
}  // namespace retro::cuda
