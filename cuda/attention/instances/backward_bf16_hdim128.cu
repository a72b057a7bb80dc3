// Written by cuda/attention/generate_instances.py: the backward of the attention kernels for
// __nv_bfloat16, head_dim 128.
#include "attention/run.cuh"

namespace retro::cuda {
template void run_backward<__nv_bfloat16, 128>(const RetroAttentionParams&, const AttentionBackward&, float*, bool, cudaStream_t);
}  // namespace retro::cuda
