// The IVF-PQ scan with __half look-up tables (ivf_pq/scan_kernel.cuh): one instantiation per file.
#include "ivf_pq/scan_kernel.cuh"

namespace retro::cuda::ivfpq {
template void launch_scan<__half>(const ScanArgs&, idx_t, size_t, cudaStream_t);
}  // namespace retro::cuda::ivfpq
