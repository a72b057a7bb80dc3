// Lloyd's k-means with GEMM assignment, seeded and deterministic for a given seed (any thread
// count). Empty clusters are re-seeded by splitting a large one, as faiss does.
#pragma once
#include <cstdint>
#include <vector>

#include "retro/types.h"

namespace retro {

struct KMeansParams {
  int niter = 25;
  int max_points_per_centroid = 256;  // larger training sets are subsampled (seeded)
  uint64_t seed = 0;
  Metric metric = Metric::L2;  // assignment metric (inner product for IVF with that metric)
};

struct KMeansResult {
  std::vector<float> centroids;  // (k, d)
  std::vector<double> objective;  // per iteration: sum of squared L2 (or of -IP) distances
};

// x: (n, d) with row stride ldx. Requires n >= k.
KMeansResult kmeans(idx_t n, int d, const float* x, idx_t ldx, idx_t k, const KMeansParams& params);

}  // namespace retro
