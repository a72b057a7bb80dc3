// Written by cuda/attention/generate_instances.py: the backward of the attention kernels for
// __half, head_dim 128.
#include "attention/run.cuh"

namespace retro::cuda {
template void run_backward<__half, 128>(const RetroAttentionParams&, const AttentionBackward&, float*, bool, cudaStream_t);
}  // namespace retro::cuda
