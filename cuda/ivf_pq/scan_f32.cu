// The IVF-PQ scan with float look-up tables (ivf_pq/scan_kernel.cuh): one instantiation per file.
#include "ivf_pq/scan_kernel.cuh"

namespace retro::cuda::ivfpq {
template void launch_scan<float>(const ScanArgs&, idx_t, size_t, cudaStream_t);
}  // namespace retro::cuda::ivfpq
