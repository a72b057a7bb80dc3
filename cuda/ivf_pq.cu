// IVF-PQ on the GPU (retro/ivf_pq_cuda.h): checks, workspace plans and launches. The kernels are in
// cuda/ivf_pq/: the coarse CUTLASS GEMM (coarse_gemm.cu), the search kernels with their block
// top-k (the scan instantiated once per file: scan_f32.cu, scan_f16.cu), the encoder.
// Queries go in chunks that bound the coarse (chunk, nlist) matrix; when a chunk has too few
// queries to fill the GPU (single queries), each query's probes are split over several blocks
// whose partial top-k are merged by a last kernel.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "ivf_pq/coarse_gemm.cuh"
#include "ivf_pq/encode_kernel.cuh"
#include "ivf_pq/launch.cuh"
#include "ivf_pq/search_kernels.cuh"
#include "retro/error.h"
#include "retro/ivf_pq_cuda.h"

namespace retro::cuda {
namespace {

using ivfpq::kThreads;

constexpr int kMaxK = 1024;
constexpr int kMaxNprobe = 1024;
constexpr idx_t kCoarseFloats = idx_t{1} << 26;  // coarse matrix of a chunk: at most 256 MiB
constexpr int kBlocksPerSm = 4;                  // blocks per SM a chunk's scan aims at

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

int device_attribute(cudaDeviceAttr attribute, int device) {
  int value = 0;
  const cudaError_t status = cudaDeviceGetAttribute(&value, attribute, device);
  RETRO_CHECK(status == cudaSuccess, "CUDA IVF-PQ: cannot query device %d: %s", device,
              cudaGetErrorString(status));
  return value;
}

void use_device(int device) {
  const cudaError_t status = cudaSetDevice(device);
  RETRO_CHECK(status == cudaSuccess, "CUDA IVF-PQ: cannot use device %d: %s", device,
              cudaGetErrorString(status));
}

// What search and encoding both need: the trained quantizers.
std::string quantizers_unsupported(const IvfPqDeviceIndex& ix, int device) {
  if (ix.d <= 0 || ix.pq_m <= 0 || ix.d % ix.pq_m != 0)
    return "d=" + std::to_string(ix.d) + " must be a positive multiple of pq_m=" + std::to_string(ix.pq_m);
  if (ix.nlist <= 0 || ix.nlist >= (idx_t{1} << 31)) return "nlist must be in [1, 2^31)";
  if (ix.pq_m >= 65536) return "pq_m must be below 65536";
  if (ix.metric != Metric::L2 && ix.metric != Metric::InnerProduct) return "unknown metric";
  if (ix.coarse_centroids == nullptr || ix.pq_centroids_t == nullptr)
    return "the device index has no quantizers";
  if (ix.metric == Metric::L2 && ix.coarse_norms == nullptr)
    return "an L2 device index needs the centroids' squared norms";
  const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (ivfpq::encode_shared_bytes(ix.d / ix.pq_m) > size_t(optin))
    return "dsub=" + std::to_string(ix.d / ix.pq_m) + " is too wide for the encoder's shared memory";
  return "";
}

struct SearchPlan {
  int nprobe = 0;
  idx_t chunk = 0;  // queries per chunk
  int splits = 1;   // blocks per query in the scan
  size_t coarse = 0, probes = 0, probe_dist = 0, part_dist = 0, part_ids = 0;  // byte offsets
  size_t bytes = 0;
};

// Rows per chunk against k centroids: the (chunk, k) coarse matrix stays under kCoarseFloats.
idx_t coarse_chunk(idx_t k, idx_t n) {
  return std::max<idx_t>(1, std::min<idx_t>(std::max<idx_t>(n, 1), kCoarseFloats / k));
}

SearchPlan plan_search(const IvfPqDeviceIndex& ix, idx_t n, const IvfPqCudaSearchParams& p,
                       int device) {
  SearchPlan plan;
  plan.nprobe = static_cast<int>(std::min<idx_t>(p.nprobe, ix.nlist));
  plan.chunk = coarse_chunk(ix.nlist, n);
  const idx_t target = idx_t{kBlocksPerSm} * device_attribute(cudaDevAttrMultiProcessorCount, device);
  plan.splits = static_cast<int>(
      std::clamp<idx_t>((target + plan.chunk - 1) / plan.chunk, 1, plan.nprobe));
  const size_t rows = size_t(plan.chunk);
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t offset = at;
    at += align_up(bytes);
    return offset;
  };
  plan.coarse = take(rows * ix.nlist * sizeof(float));
  plan.probes = take(rows * plan.nprobe * sizeof(idx_t));
  plan.probe_dist = take(rows * plan.nprobe * sizeof(float));
  if (plan.splits > 1) {
    plan.part_dist = take(rows * plan.splits * p.k * sizeof(float));
    plan.part_ids = take(rows * plan.splits * p.k * sizeof(idx_t));
  }
  plan.bytes = at;
  return plan;
}

// Coarse GEMM and top-nprobe of nq queries against k centroids: probes and their distances
// (||q - c||^2 or -<q, c>); coarse is (nq, k) scratch.
void select_probes(Metric metric, idx_t nq, int d, const float* x, idx_t k,
                   const float* centroids, const float* norms, int nprobe, float* coarse,
                   idx_t* probes, float* probe_dist, cudaStream_t stream) {
  ivfpq::coarse_gemm(metric, nq, d, x, k, centroids, norms, coarse, stream);
  const ivfpq::SelectArgs args{coarse, x, k, d, metric == Metric::L2, nprobe, probes, probe_dist};
  ivfpq::launch(ivfpq::select_probes_kernel, nq, 1, kThreads, ivfpq::top_k_bytes(nprobe, kThreads),
         stream, "probe selection", args);
}

template <typename T>
T* at_offset(void* workspace, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(workspace) + offset);
}

}  // namespace

int ivfpq_max_k() { return kMaxK; }
int ivfpq_max_nprobe() { return kMaxNprobe; }

std::string ivfpq_search_unsupported(const IvfPqDeviceIndex& ix, const IvfPqCudaSearchParams& p,
                                     int device) {
  const std::string why = quantizers_unsupported(ix, device);
  if (!why.empty()) return why;
  if (p.k < 1 || p.k > kMaxK)
    return "k must be in [1, " + std::to_string(kMaxK) + "], got " + std::to_string(p.k);
  if (p.nprobe < 1 || std::min<idx_t>(p.nprobe, ix.nlist) > kMaxNprobe)
    return "nprobe must be in [1, " + std::to_string(kMaxNprobe) + "], got " + std::to_string(p.nprobe);
  if (ix.offsets == nullptr || ix.sizes == nullptr) return "the device index has no lists";
  if (ix.max_list_size > 0 && (ix.codes == nullptr || ix.ids == nullptr))
    return "the device index has no codes or ids";
  if (ix.max_list_size > 0 && ix.metric == Metric::L2 && ix.terms == nullptr)
    return "an L2 device index needs the per-vector terms";
  const size_t smem = ivfpq::scan_shared_bytes(ix.d, ix.pq_m, p.fp16_lut, static_cast<int>(p.k));
  const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (smem > size_t(optin))
    return "the scan needs " + std::to_string(smem) + " bytes of shared memory (d=" +
           std::to_string(ix.d) + ", pq_m=" + std::to_string(ix.pq_m) + ", k=" +
           std::to_string(p.k) + ") but the device allows " + std::to_string(optin) +
           (p.fp16_lut ? "" : ": try fp16 tables");
  return "";
}

size_t ivfpq_search_workspace(const IvfPqDeviceIndex& ix, idx_t n, const IvfPqCudaSearchParams& p,
                              int device) {
  const std::string why = ivfpq_search_unsupported(ix, p, device);
  RETRO_CHECK_ARG(why.empty(), "CUDA IVF-PQ search: %s", why.c_str());
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  return plan_search(ix, n, p, device).bytes;
}

void ivfpq_search(const IvfPqDeviceIndex& ix, idx_t n, const float* x,
                  const IvfPqCudaSearchParams& p, float* distances, idx_t* labels,
                  void* workspace, size_t workspace_bytes, int device, uintptr_t stream_handle) {
  const std::string why = ivfpq_search_unsupported(ix, p, device);
  RETRO_CHECK_ARG(why.empty(), "CUDA IVF-PQ search: %s", why.c_str());
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  if (n == 0) return;
  RETRO_CHECK_ARG(x != nullptr && distances != nullptr && labels != nullptr,
                  "CUDA IVF-PQ search needs queries, distances and labels");
  use_device(device);
  const SearchPlan plan = plan_search(ix, n, p, device);
  RETRO_CHECK_ARG(workspace != nullptr && workspace_bytes >= plan.bytes,
                  "CUDA IVF-PQ search needs %zu bytes of workspace, got %zu", plan.bytes,
                  workspace_bytes);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int k = static_cast<int>(p.k);
  const bool negate = ix.metric == Metric::InnerProduct;
  idx_t* probes = at_offset<idx_t>(workspace, plan.probes);
  float* probe_dist = at_offset<float>(workspace, plan.probe_dist);
  for (idx_t q0 = 0; q0 < n; q0 += plan.chunk) {
    const idx_t nq = std::min(plan.chunk, n - q0);
    const float* xq = x + q0 * ix.d;
    select_probes(ix.metric, nq, ix.d, xq, ix.nlist, ix.coarse_centroids, ix.coarse_norms,
                  plan.nprobe, at_offset<float>(workspace, plan.coarse), probes, probe_dist, stream);
    const bool split = plan.splits > 1;
    ivfpq::ScanArgs scan{ix, xq, probes, probe_dist, plan.nprobe, plan.splits, k,
                         split ? at_offset<float>(workspace, plan.part_dist) : distances + q0 * k,
                         split ? at_offset<idx_t>(workspace, plan.part_ids) : labels + q0 * k};
    const size_t smem = ivfpq::scan_shared_bytes(ix.d, ix.pq_m, p.fp16_lut, k);
    if (p.fp16_lut)
      ivfpq::launch_scan<__half>(scan, nq * plan.splits, smem, stream);
    else
      ivfpq::launch_scan<float>(scan, nq * plan.splits, smem, stream);
    if (split) {
      const ivfpq::MergeArgs merge{scan.dist_out, scan.ids_out, plan.splits, k, negate,
                                   distances + q0 * k, labels + q0 * k};
      ivfpq::launch(ivfpq::merge_kernel, nq, 1, kThreads, ivfpq::top_k_bytes(k, kThreads), stream,
             "merge", merge);
    }
  }
}

size_t nearest_centroids_workspace(idx_t n, idx_t k) {
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(k > 0 && k < (idx_t{1} << 31), "the number of centroids must be in [1, 2^31)");
  return align_up(size_t(coarse_chunk(k, n)) * k * sizeof(float));
}

void nearest_centroids(Metric metric, idx_t n, int d, const float* x, idx_t k,
                       const float* centroids, const float* norms, idx_t* labels,
                       float* distances, void* workspace, size_t workspace_bytes, int device,
                       uintptr_t stream_handle) {
  RETRO_CHECK_ARG(metric == Metric::L2 || metric == Metric::InnerProduct, "unknown metric");
  RETRO_CHECK_ARG(d > 0, "d must be positive, got %d", d);
  const size_t need = nearest_centroids_workspace(n, k);
  if (n == 0) return;
  RETRO_CHECK_ARG(x != nullptr && centroids != nullptr && labels != nullptr && distances != nullptr,
                  "nearest_centroids needs vectors, centroids, labels and distances");
  RETRO_CHECK_ARG(metric != Metric::L2 || norms != nullptr, "L2 assignment needs the centroid norms");
  RETRO_CHECK_ARG(workspace != nullptr && workspace_bytes >= need,
                  "CUDA nearest_centroids needs %zu bytes of workspace, got %zu", need, workspace_bytes);
  use_device(device);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const idx_t chunk = coarse_chunk(k, n);
  for (idx_t i0 = 0; i0 < n; i0 += chunk) {
    const idx_t nb = std::min(chunk, n - i0);
    select_probes(metric, nb, d, x + i0 * d, k, centroids, norms, 1, static_cast<float*>(workspace),
                  labels + i0, distances + i0, stream);
  }
}

size_t ivfpq_encode_workspace(const IvfPqDeviceIndex& ix, idx_t n, int /*device*/) {
  return nearest_centroids_workspace(n, ix.nlist) + align_up(size_t(std::max<idx_t>(n, 1)) * sizeof(float));
}

void ivfpq_encode(const IvfPqDeviceIndex& ix, idx_t n, const float* x, idx_t* list_of,
                  uint8_t* codes, void* workspace, size_t workspace_bytes, int device,
                  uintptr_t stream_handle) {
  const std::string why = quantizers_unsupported(ix, device);
  RETRO_CHECK_ARG(why.empty(), "CUDA IVF-PQ encode: %s", why.c_str());
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  if (n == 0) return;
  RETRO_CHECK_ARG(x != nullptr && list_of != nullptr && codes != nullptr,
                  "CUDA IVF-PQ encode needs vectors, list and code outputs");
  const size_t need = ivfpq_encode_workspace(ix, n, device);
  RETRO_CHECK_ARG(workspace != nullptr && workspace_bytes >= need,
                  "CUDA IVF-PQ encode needs %zu bytes of workspace, got %zu", need, workspace_bytes);
  const size_t assign_bytes = nearest_centroids_workspace(n, ix.nlist);
  nearest_centroids(ix.metric, n, ix.d, x, ix.nlist, ix.coarse_centroids, ix.coarse_norms, list_of,
                    at_offset<float>(workspace, assign_bytes), workspace, assign_bytes, device,
                    stream_handle);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const ivfpq::EncodeArgs args{ix, n, x, list_of, codes};
  ivfpq::launch(ivfpq::encode_kernel, (n + ivfpq::kEncodeVectors - 1) / ivfpq::kEncodeVectors, ix.pq_m,
         ivfpq::kEncodeVectors, ivfpq::encode_shared_bytes(ix.d / ix.pq_m), stream, "encode", args);
}

}  // namespace retro::cuda
