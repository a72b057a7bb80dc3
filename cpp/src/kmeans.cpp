#include "kmeans.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "distances.h"
#include "retro/error.h"

namespace retro {
namespace {

// Seeded choice of `count` distinct indices out of n (partial Fisher-Yates), in increasing order
// when `sorted` so that subsampling keeps the data order.
std::vector<idx_t> sample_indices(idx_t n, idx_t count, std::mt19937_64& rng, bool sorted) {
  std::vector<idx_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  for (idx_t i = 0; i < count; ++i) {
    std::uniform_int_distribution<idx_t> pick(i, n - 1);
    std::swap(perm[i], perm[pick(rng)]);
  }
  perm.resize(count);
  if (sorted) std::sort(perm.begin(), perm.end());
  return perm;
}

// Centroid j = mean of its points; every centroid is summed by one thread in point order.
void update_centroids(idx_t n, int d, const float* x, idx_t ldx, idx_t k, const idx_t* assign,
                      std::vector<float>& centroids, std::vector<idx_t>& sizes) {
  std::fill(sizes.begin(), sizes.end(), 0);
  for (idx_t i = 0; i < n; ++i) sizes[assign[i]]++;
  std::vector<double> sums(static_cast<size_t>(k) * d, 0.0);
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const idx_t c0 = k * t / nt, c1 = k * (t + 1) / nt;
    for (idx_t i = 0; i < n; ++i) {
      idx_t c = assign[i];
      if (c < c0 || c >= c1) continue;
      double* s = sums.data() + c * d;
      const float* xi = x + i * ldx;
      for (int j = 0; j < d; ++j) s[j] += xi[j];
    }
  }
  for (idx_t c = 0; c < k; ++c) {
    if (sizes[c] == 0) continue;
    for (int j = 0; j < d; ++j)
      centroids[c * d + j] = static_cast<float>(sums[c * d + j] / sizes[c]);
  }
}

// An empty cluster takes half of a cluster chosen with probability ~ (size - 1): both centroids
// are the big one's, pushed apart by a small symmetric perturbation.
void split_empty_clusters(idx_t n, int d, idx_t k, std::vector<float>& centroids,
                          std::vector<idx_t>& sizes, std::mt19937_64& rng) {
  constexpr float kEps = 1.0f / 1024;
  for (idx_t ci = 0; ci < k; ++ci) {
    if (sizes[ci] != 0) continue;
    idx_t cj = 0;
    for (;;) {
      std::uniform_real_distribution<double> u(0.0, 1.0);
      double r = u(rng) * static_cast<double>(n - k);
      for (cj = 0; cj < k; ++cj) {
        r -= static_cast<double>(std::max<idx_t>(sizes[cj] - 1, 0));
        if (r < 0) break;
      }
      if (cj < k && sizes[cj] > 1) break;
    }
    std::memcpy(&centroids[ci * d], &centroids[cj * d], d * sizeof(float));
    for (int j = 0; j < d; ++j) {
      float sign = (j % 2 == 0) ? 1.0f : -1.0f;
      centroids[ci * d + j] *= 1 + sign * kEps;
      centroids[cj * d + j] *= 1 - sign * kEps;
    }
    sizes[ci] = sizes[cj] / 2;
    sizes[cj] -= sizes[ci];
  }
}

}  // namespace

KMeansResult kmeans(idx_t n, int d, const float* x, idx_t ldx, idx_t k,
                    const KMeansParams& params) {
  RETRO_CHECK_ARG(k >= 1, "k-means needs at least one centroid");
  RETRO_CHECK_ARG(n >= k, "k-means with %lld centroids needs at least as many training points, got %lld",
                  static_cast<long long>(k), static_cast<long long>(n));
  RETRO_CHECK_ARG(params.niter >= 1, "k-means needs niter >= 1, got %d", params.niter);
  std::mt19937_64 rng(params.seed);

  // Subsample large training sets, keeping the data order.
  std::vector<float> subsample;
  idx_t max_points = k * static_cast<idx_t>(params.max_points_per_centroid);
  if (params.max_points_per_centroid > 0 && n > max_points) {
    std::vector<idx_t> keep = sample_indices(n, max_points, rng, true);
    subsample.resize(static_cast<size_t>(max_points) * d);
    for (idx_t i = 0; i < max_points; ++i)
      std::memcpy(&subsample[i * d], x + keep[i] * ldx, d * sizeof(float));
    x = subsample.data();
    ldx = d;
    n = max_points;
  }

  KMeansResult result;
  result.centroids.resize(static_cast<size_t>(k) * d);
  std::vector<idx_t> init = sample_indices(n, k, rng, false);
  for (idx_t c = 0; c < k; ++c)
    std::memcpy(&result.centroids[c * d], x + init[c] * ldx, d * sizeof(float));

  std::vector<float> dist(n);
  std::vector<idx_t> assign(n);
  std::vector<idx_t> sizes(k);
  for (int iter = 0; iter < params.niter; ++iter) {
    PackedVectors packed(k, d, result.centroids.data(), d);
    knn(params.metric, n, x, ldx, packed, 1, dist.data(), assign.data());
    result.objective.push_back(std::accumulate(dist.begin(), dist.end(), 0.0));
    update_centroids(n, d, x, ldx, k, assign.data(), result.centroids, sizes);
    split_empty_clusters(n, d, k, result.centroids, sizes, rng);
  }
  return result;
}

}  // namespace retro
