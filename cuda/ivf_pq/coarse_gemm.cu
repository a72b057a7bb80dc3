// The coarse GEMM of ivf_pq/coarse_gemm.cuh: its one CUTLASS instantiation.
#include <cutlass/gemm/device/gemm.h>

#include "ivf_pq/coarse_gemm.cuh"
#include "retro/error.h"

namespace retro::cuda::ivfpq {
namespace {

using CoarseGemm = cutlass::gemm::device::Gemm<
    float, cutlass::layout::RowMajor,     // queries (nq, d)
    float, cutlass::layout::ColumnMajor,  // centroids as the (d, nlist) column-major operand
    float, cutlass::layout::RowMajor,     // distances (nq, nlist)
    float, cutlass::arch::OpClassSimt, cutlass::arch::Sm80>;

}  // namespace

void coarse_gemm(Metric metric, idx_t nq, int d, const float* x, idx_t k, const float* centroids,
                 const float* norms, float* out, cudaStream_t stream) {
  const bool l2 = metric == Metric::L2;
  const int n = static_cast<int>(k);
  CoarseGemm::Arguments args(
      {static_cast<int>(nq), n, d},
      {x, d},
      {centroids, d},
      {l2 ? norms : out, l2 ? 0 : n},
      {out, n},
      {l2 ? -2.0f : -1.0f, l2 ? 1.0f : 0.0f});
  CoarseGemm gemm;
  cutlass::Status status = gemm.can_implement(args);
  RETRO_CHECK(status == cutlass::Status::kSuccess, "IVF-PQ coarse GEMM (%lld x %d x %d): %s",
              static_cast<long long>(nq), n, d, cutlassGetStatusString(status));
  status = gemm.initialize(args, nullptr, stream);
  if (status == cutlass::Status::kSuccess) status = gemm.run(stream);
  RETRO_CHECK(status == cutlass::Status::kSuccess, "IVF-PQ coarse GEMM failed: %s (%s)",
              cutlassGetStatusString(status), cudaGetErrorString(cudaGetLastError()));
}

}  // namespace retro::cuda::ivfpq
