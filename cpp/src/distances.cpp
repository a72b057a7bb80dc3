#include "distances.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "retro/error.h"
#include "simd/kernels.h"
#include "top_k.h"

namespace retro {

PackedVectors::PackedVectors(idx_t n, int d, const float* x, idx_t ldx)
    : n_(n), d_(d), panels_(simd::packed_size(n, d)), norms_(n) {
  simd::pack_panels(n, d, x, ldx, panels_.data());
  for (idx_t i = 0; i < n; ++i) norms_[i] = squared_norm(d, x + i * ldx);
}

float squared_norm(int d, const float* x) {
  float s = 0.0f;
  for (int j = 0; j < d; ++j) s += x[j] * x[j];
  return s;
}

float inner_product(int d, const float* x, const float* y) {
  float s = 0.0f;
  for (int j = 0; j < d; ++j) s += x[j] * y[j];
  return s;
}

float l2_distance(int d, const float* x, const float* y) {
  float s = 0.0f;
  for (int j = 0; j < d; ++j) {
    float diff = x[j] - y[j];
    s += diff * diff;
  }
  return s;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // subnormal
  } else if (exponent == 31) {
    magnitude = mantissa == 0 ? std::numeric_limits<float>::infinity()
                              : std::numeric_limits<float>::quiet_NaN();
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400), static_cast<int>(exponent) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &magnitude, sizeof(bits));
  bits |= sign;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

void check_finite(idx_t n, int d, const float* x, const char* what) {
  size_t total = static_cast<size_t>(n) * d;
  for (size_t i = 0; i < total; ++i)
    RETRO_CHECK_ARG(std::isfinite(x[i]), "%s contains NaN or inf (first at row %lld, column %lld)",
                    what, static_cast<long long>(i / d), static_cast<long long>(i % d));
}

namespace {

constexpr idx_t kQueryBlock = 96;    // GEMM rows per tile
constexpr idx_t kColumnBlock = 1024;  // GEMM columns per tile (a multiple of simd::kPanel)

// Distances of queries [q0, q1) to columns [c0, c1) pushed into heaps[q - q0].
void scan_tile(Metric metric, idx_t q0, idx_t q1, const float* x, idx_t ldx,
               const PackedVectors& base, idx_t c0, idx_t c1, float* tile, TopK* heaps,
               float* best, idx_t* best_label) {
  const int d = base.d();
  simd::kernels().gemm_packed(q1 - q0, c1 - c0, d, x + q0 * ldx, ldx,
                              base.panels() + (c0 / simd::kPanel) * d * simd::kPanel, tile,
                              c1 - c0);
  const float* norms = base.norms();
  for (idx_t q = q0; q < q1; ++q) {
    const float* row = tile + (q - q0) * (c1 - c0);
    float qnorm = metric == Metric::L2 ? squared_norm(d, x + q * ldx) : 0.0f;
    if (heaps == nullptr) {  // k == 1: argmin
      float& bd = best[q - q0];
      idx_t& bl = best_label[q - q0];
      for (idx_t c = c0; c < c1; ++c) {
        float dist = metric == Metric::L2 ? qnorm + norms[c] - 2.0f * row[c - c0] : -row[c - c0];
        if (dist < bd || (dist == bd && c < bl)) {
          bd = dist;
          bl = c;
        }
      }
      continue;
    }
    TopK& heap = heaps[q - q0];
    for (idx_t c = c0; c < c1; ++c) {
      float dist = metric == Metric::L2 ? qnorm + norms[c] - 2.0f * row[c - c0] : -row[c - c0];
      if (dist <= heap.threshold()) heap.push(dist, c);
    }
  }
}

struct Results {
  std::vector<TopK> heaps;
  std::vector<float> best;
  std::vector<idx_t> best_label;
  Results(idx_t nq, idx_t k)
      : best(k == 1 ? nq : 0, std::numeric_limits<float>::infinity()),
        best_label(k == 1 ? nq : 0, -1) {
    if (k > 1) heaps.assign(nq, TopK(k));
  }
  TopK* heap_ptr() { return heaps.empty() ? nullptr : heaps.data(); }
  void merge(const Results& o) {
    for (size_t i = 0; i < heaps.size(); ++i) heaps[i].merge(o.heaps[i]);
    for (size_t i = 0; i < best.size(); ++i)
      if (o.best[i] < best[i] || (o.best[i] == best[i] && o.best_label[i] < best_label[i])) {
        best[i] = o.best[i];
        best_label[i] = o.best_label[i];
      }
  }
  void write(idx_t nq, idx_t k, float* distances, idx_t* labels) {
    for (idx_t q = 0; q < nq; ++q) {
      if (k == 1) {
        distances[q] = best[q];
        labels[q] = best_label[q];
      } else {
        heaps[q].write_sorted(distances + q * k, labels + q * k);
      }
    }
  }
};

}  // namespace

void knn(Metric metric, idx_t nq, const float* x, idx_t ldx, const PackedVectors& base, idx_t k,
         float* distances, idx_t* labels) {
  RETRO_CHECK_ARG(k > 0, "k must be positive, got %lld", static_cast<long long>(k));
  const idx_t nb = base.n();
  const int threads = omp_get_max_threads();
  if (nq >= 2 * threads || threads == 1) {
    const idx_t nblocks = (nq + kQueryBlock - 1) / kQueryBlock;
#pragma omp parallel
    {
      std::vector<float> tile(kQueryBlock * kColumnBlock);
#pragma omp for schedule(dynamic)
      for (idx_t b = 0; b < nblocks; ++b) {
        idx_t q0 = b * kQueryBlock, q1 = std::min(nq, q0 + kQueryBlock);
        Results results(q1 - q0, k);
        for (idx_t c0 = 0; c0 < nb; c0 += kColumnBlock)
          scan_tile(metric, q0, q1, x, ldx, base, c0, std::min(nb, c0 + kColumnBlock),
                    tile.data(), results.heap_ptr(), results.best.data(),
                    results.best_label.data());
        results.write(q1 - q0, k, distances + q0 * k, labels + q0 * k);
      }
    }
    return;
  }
  // Few queries: split the columns between threads, then merge the per-thread results.
  Results merged(nq, k);
  const idx_t ncblocks = (nb + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel
  {
    std::vector<float> tile(nq * kColumnBlock);
    Results local(nq, k);
#pragma omp for schedule(dynamic)
    for (idx_t cb = 0; cb < ncblocks; ++cb) {
      idx_t c0 = cb * kColumnBlock;
      scan_tile(metric, 0, nq, x, ldx, base, c0, std::min(nb, c0 + kColumnBlock), tile.data(),
                local.heap_ptr(), local.best.data(), local.best_label.data());
    }
#pragma omp critical
    merged.merge(local);
  }
  merged.write(nq, k, distances, labels);
}

}  // namespace retro
