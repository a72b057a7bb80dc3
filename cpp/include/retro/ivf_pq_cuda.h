// IVF-PQ on the GPU (cuda/ivf_pq.cu): search and encoding against a device-resident copy of a
// trained IvfPqIndex with 8-bit codes of residuals (retro/ivf_pq_index.h). The caller owns every
// buffer (the Python layer allocates them with torch); all pointers are device memory of `device`
// and the work is queued on `stream` (a cudaStream_t), CUTLASS's habit: ask for the workspace
// size, allocate it, run.
//
// Distances follow the CPU index exactly in their decomposition, so that a CPU-trained index
// searched on the GPU returns the CPU's results up to float rounding at near-ties:
//   L2: ||q - c||^2 + terms[i] + sum_m lut[m][code_m],  lut[m][j] = -2 <q_m, p_mj>
//   IP: -<q, c> + sum_m lut[m][code_m],                 lut[m][j] = -<q_m, p_mj>
// (internally smaller is better; inner-product results are negated on output, as on the CPU).
// Results are ordered by (distance, id), smaller id first on ties; (+inf, -1) (L2) or (-inf, -1)
// (IP) where fewer than k vectors were scanned.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "retro/types.h"

namespace retro::cuda {

// The device copy of an index: the trained quantizers and IvfPqConcatenatedLists, uploaded.
struct IvfPqDeviceIndex {
  int d = 0;
  int pq_m = 0;  // 8-bit codes: 256 centroids per sub-quantizer, dsub = d / pq_m
  idx_t nlist = 0;
  Metric metric = Metric::L2;
  const float* coarse_centroids = nullptr;  // (nlist, d)
  const float* coarse_norms = nullptr;      // (nlist,) ||c||^2 (read for L2 only)
  const float* pq_centroids_t = nullptr;    // (pq_m, dsub, 256): tables are rows contiguous in j
  const uint8_t* codes = nullptr;  // list l's blocks of 64 vectors start at byte offsets[l] * pq_m
  const idx_t* offsets = nullptr;  // (nlist + 1,) in vectors, multiples of 64
  const idx_t* sizes = nullptr;    // (nlist,)
  const idx_t* ids = nullptr;      // (offsets[nlist],)
  const float* terms = nullptr;    // (offsets[nlist],) L2 only: ||r||^2 + 2<c, r>
  idx_t max_list_size = 0;         // host-side copy of max(sizes)
};

struct IvfPqCudaSearchParams {
  int nprobe = 8;         // lists per query, clamped to nlist
  idx_t k = 10;           // results per query, 1 .. ivfpq_max_k()
  bool fp16_lut = false;  // look-up tables in float16 (half the shared memory; sums stay float32)
};

int ivfpq_max_k();      // 1024
int ivfpq_max_nprobe(); // 1024

// "" when the GPU can run this search (sizes, table bytes against the device's shared memory),
// else why not.
std::string ivfpq_search_unsupported(const IvfPqDeviceIndex& index,
                                     const IvfPqCudaSearchParams& params, int device);
// Bytes of workspace a search of n queries needs (bounded: queries go in chunks).
size_t ivfpq_search_workspace(const IvfPqDeviceIndex& index, idx_t n,
                              const IvfPqCudaSearchParams& params, int device);
// x (n, d) float32 -> distances (n, k) float32, labels (n, k) int64.
void ivfpq_search(const IvfPqDeviceIndex& index, idx_t n, const float* x,
                  const IvfPqCudaSearchParams& params, float* distances, idx_t* labels,
                  void* workspace, size_t workspace_bytes, int device, uintptr_t stream);

// Encoding for add(): x (n, d) float32 -> list_of (n,) int64 (the nearest centroid, smallest list
// on ties) and codes (n, pq_m) uint8 of the residuals (the nearest PQ centroid by
// ||p||^2 - 2<r, p>, as the CPU's encoder). Only the quantizers of `index` are read.
size_t ivfpq_encode_workspace(const IvfPqDeviceIndex& index, idx_t n, int device);
void ivfpq_encode(const IvfPqDeviceIndex& index, idx_t n, const float* x, idx_t* list_of,
                  uint8_t* codes, void* workspace, size_t workspace_bytes, int device,
                  uintptr_t stream);

// The assignment step of k-means on the GPU (and the coarse assignment of encoding): for each row
// of x (n, d) the nearest of the centroids (k, d), whose squared norms (k,) are read for L2 only,
// by the coarse CUTLASS GEMM -> labels (n,) int64 (the smallest index on ties) and distances (n,)
// float32: ||x - c||^2 (L2) or -<x, c> (IP).
size_t nearest_centroids_workspace(idx_t n, idx_t k);
void nearest_centroids(Metric metric, idx_t n, int d, const float* x, idx_t k,
                       const float* centroids, const float* norms, idx_t* labels,
                       float* distances, void* workspace, size_t workspace_bytes, int device,
                       uintptr_t stream);

}  // namespace retro::cuda
