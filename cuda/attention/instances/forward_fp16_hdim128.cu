// Written by cuda/attention/generate_instances.py: the forward of the attention kernels for
// __half, head_dim 128.
#include "attention/run.cuh"

namespace retro::cuda {
template void run_forward<__half, 128>(const RetroAttentionParams&, const AttentionForward&, cudaStream_t);
}  // namespace retro::cuda
