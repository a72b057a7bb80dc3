// Nearest neighbours of query rows among the columns of a packed matrix, through the blocked GEMM
// of simd/kernels.h: the shared engine of exact search, k-means assignment, coarse quantization
// and PQ encoding.
#pragma once
#include <cstdint>
#include <vector>

#include "retro/types.h"

namespace retro {

// A right-hand side (n rows of dimension d) packed for the GEMM, with its squared norms.
class PackedVectors {
 public:
  PackedVectors() = default;
  PackedVectors(idx_t n, int d, const float* x, idx_t ldx);
  idx_t n() const { return n_; }
  int d() const { return d_; }
  const float* panels() const { return panels_.data(); }
  const float* norms() const { return norms_.data(); }  // (n,) ||x_j||^2
  // Column biases of the fused argmin (padded width, +inf on padding): ||x_j||^2, or 0 for IP.
  const float* argmin_bias(Metric metric) const {
    return metric == Metric::L2 ? l2_bias_.data() : ip_bias_.data();
  }

 private:
  idx_t n_ = 0;
  int d_ = 0;
  std::vector<float> panels_;
  std::vector<float> norms_;
  std::vector<float> l2_bias_, ip_bias_;
};

// Internal distances are "smaller is better": squared L2, or minus the inner product.
// x: (nq, d) with row stride ldx -> distances, labels: (nq, k) best first, (+inf, -1) past the end.
// With k == 1 this is an argmin (k-means assignment). Uses OpenMP over query blocks, or over
// column blocks when there are few queries; results do not depend on the thread count.
void knn(Metric metric, idx_t nq, const float* x, idx_t ldx, const PackedVectors& base, idx_t k,
         float* distances, idx_t* labels);

// The k == 1 case of knn without the distances, on the calling thread: labels[i] = the index of
// the nearest packed vector to row i of x (nq, d; row stride ldx). The PQ encoder calls it for
// every sub-quantizer of a block of vectors.
void nearest_labels(Metric metric, idx_t nq, const float* x, idx_t ldx, const PackedVectors& base,
                    idx_t* labels);

// Internal distances (n,) -> search results in place: minus the inner product becomes the inner
// product (larger is better, as faiss returns it); L2 stays. Every search converts here, once.
inline void to_search_distances(Metric metric, idx_t n, float* distances) {
  if (metric == Metric::InnerProduct)
    for (idx_t i = 0; i < n; ++i) distances[i] = -distances[i];
}

float squared_norm(int d, const float* x);

// IEEE half (as stored in float16 numpy arrays) to float.
float half_to_float(uint16_t h);

// True when `work` multiply-adds or table look-ups (~1M: a few hundred microseconds on one core,
// more where the data streams from memory) pay for waking the other threads; below it, small
// searches run on the calling thread.
inline bool worth_threads(double work) { return work >= double(1 << 20); }

// Largest |value| accepted in a vector: squared distances of 2^20-dimensional vectors stay finite.
constexpr float kMaxMagnitude = 1e15f;

// Throws ValueError naming the first element of x (n, d) that is NaN, inf or beyond kMaxMagnitude.
void check_vectors(idx_t n, int d, const float* x, const char* what);

}  // namespace retro
