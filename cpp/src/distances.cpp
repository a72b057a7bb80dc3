#include "distances.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "parallel_errors.h"
#include "retro/error.h"
#include "simd/kernels.h"
#include "top_k.h"

namespace retro {

PackedVectors::PackedVectors(idx_t n, int d, const float* x, idx_t ldx)
    : n_(n), d_(d), panels_(simd::packed_size(n, d)), norms_(n) {
  simd::pack_panels(n, d, x, ldx, panels_.data());
  for (idx_t i = 0; i < n; ++i) norms_[i] = squared_norm(d, x + i * ldx);
  const size_t width = (n + simd::kPanel - 1) / simd::kPanel * simd::kPanel;
  l2_bias_.assign(width, std::numeric_limits<float>::infinity());
  ip_bias_.assign(width, std::numeric_limits<float>::infinity());
  std::copy(norms_.begin(), norms_.end(), l2_bias_.begin());
  std::fill(ip_bias_.begin(), ip_bias_.begin() + n, 0.0f);
}

float squared_norm(int d, const float* x) {
  float s = 0.0f;
  for (int j = 0; j < d; ++j) s += x[j] * x[j];
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

void check_vectors(idx_t n, int d, const float* x, const char* what) {
  const size_t total = static_cast<size_t>(n) * d;
  size_t bad = 0;  // a branch-free pass first: the comparison fails for NaN and inf too
  for (size_t i = 0; i < total; ++i) bad += !(std::fabs(x[i]) <= kMaxMagnitude);
  if (bad == 0) return;
  size_t i = 0;
  while (std::fabs(x[i]) <= kMaxMagnitude) ++i;
  const long long row = static_cast<long long>(i / d), column = static_cast<long long>(i % d);
  RETRO_CHECK_ARG(std::isfinite(x[i]), "%s contains NaN or inf (first at row %lld, column %lld)",
                  what, row, column);
  RETRO_THROW_ARG("%s contains %g at row %lld, column %lld: values beyond 1e15 in magnitude "
                  "would overflow float32 squared distances",
                  what, static_cast<double>(x[i]), row, column);
}

namespace {

constexpr idx_t kQueryBlock = 96;     // GEMM rows per tile
constexpr idx_t kColumnBlock = 1024;  // GEMM columns per tile (a multiple of simd::kPanel)

// A per-thread GEMM output tile, kept between calls: a fresh one would be a new mmap each time,
// whose page faults cost more than the small GEMMs of k-means on sub-vectors.
float* tile_buffer(size_t size) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer.data();
}

// Distances of queries [q0, q1) to columns [c0, c1) pushed into heaps[q - q0].
void scan_tile(Metric metric, idx_t q0, idx_t q1, const float* x, idx_t ldx, const float* qnorms,
               const PackedVectors& base, idx_t c0, idx_t c1, float* tile, TopK* heaps) {
  const simd::Kernels& kern = simd::kernels();
  const int d = base.d();
  const idx_t nc = c1 - c0;
  kern.gemm_packed(q1 - q0, nc, d, x + q0 * ldx, ldx,
                   base.panels() + (c0 / simd::kPanel) * d * simd::kPanel, tile, nc);
  const float* norms = metric == Metric::L2 ? base.norms() + c0 : nullptr;
  for (idx_t q = q0; q < q1; ++q) {
    float* row = tile + (q - q0) * nc;
    kern.distances_from_inner_products(nc, qnorms[q - q0], norms, row);
    TopK& heap = heaps[q - q0];
    float threshold = heap.threshold();
    for (idx_t c = 0; c < nc; ++c)
      if (row[c] <= threshold) {
        heap.push(row[c], c0 + c);
        threshold = heap.threshold();
      }
  }
}

// The fused GEMM + argmin over every packed vector for at most kArgminRows rows of x: best (rows,)
// the smallest distance without ||x||^2, labels (rows,) its index.
constexpr idx_t kArgminRows = 256;

void argmin_rows(Metric metric, idx_t rows, const float* x, idx_t ldx, const PackedVectors& base,
                 float* best, idx_t* labels) {
  const float alpha = metric == Metric::L2 ? -2.0f : -1.0f;
  simd::kernels().gemm_argmin(rows, base.n(), base.d(), x, ldx, base.panels(),
                              base.argmin_bias(metric), alpha, best, labels);
}

// k == 1 (k-means assignment, encoding): the GEMM fused with the argmin, blocks over threads.
void nearest(Metric metric, idx_t nq, const float* x, idx_t ldx, const float* qnorms,
             const PackedVectors& base, float* distances, idx_t* labels) {
#pragma omp parallel for schedule(dynamic) if (nq > kArgminRows)
  for (idx_t q0 = 0; q0 < nq; q0 += kArgminRows) {
    const idx_t rows = std::min(kArgminRows, nq - q0);
    argmin_rows(metric, rows, x + q0 * ldx, ldx, base, distances + q0, labels + q0);
    for (idx_t q = q0; q < q0 + rows; ++q) distances[q] += qnorms[q];
  }
}

}  // namespace

void nearest_labels(Metric metric, idx_t nq, const float* x, idx_t ldx, const PackedVectors& base,
                    idx_t* labels) {
  float best[kArgminRows];
  for (idx_t q0 = 0; q0 < nq; q0 += kArgminRows)
    argmin_rows(metric, std::min(kArgminRows, nq - q0), x + q0 * ldx, ldx, base, best,
                labels + q0);
}

void knn(Metric metric, idx_t nq, const float* x, idx_t ldx, const PackedVectors& base, idx_t k,
         float* distances, idx_t* labels) {
  RETRO_CHECK_ARG(k > 0, "k must be positive, got %lld", static_cast<long long>(k));
  const idx_t nb = base.n();
  std::vector<float> qnorms(nq, 0.0f);
  if (metric == Metric::L2) {
    // A serial pass here was ~10% of encoding a batch for add() (one norm per sub-quantizer too).
#pragma omp parallel for schedule(static) if (worth_threads(static_cast<double>(nq) * base.d()))
    for (idx_t q = 0; q < nq; ++q) qnorms[q] = squared_norm(base.d(), x + q * ldx);
  }
  if (k == 1 && nb > 0) return nearest(metric, nq, x, ldx, qnorms.data(), base, distances, labels);

  const int threads = omp_get_max_threads();
  ParallelErrors errors;
  if (nq >= 2 * threads || threads == 1) {
    const idx_t nblocks = (nq + kQueryBlock - 1) / kQueryBlock;
#pragma omp parallel
    {
      float* tile = nullptr;
      std::vector<TopK> heaps;
#pragma omp for schedule(dynamic)
      for (idx_t b = 0; b < nblocks; ++b)
        errors.run([&] {
          if (tile == nullptr) {
            tile = tile_buffer(kQueryBlock * kColumnBlock);
            heaps.assign(kQueryBlock, TopK(k, nb));
          }
          const idx_t q0 = b * kQueryBlock, q1 = std::min(nq, q0 + kQueryBlock);
          for (idx_t c0 = 0; c0 < nb; c0 += kColumnBlock)
            scan_tile(metric, q0, q1, x, ldx, qnorms.data() + q0, base, c0,
                      std::min(nb, c0 + kColumnBlock), tile, heaps.data());
          for (idx_t q = q0; q < q1; ++q)
            heaps[q - q0].write_sorted(distances + q * k, labels + q * k);
        });
    }
    errors.rethrow();
    return;
  }
  // Few queries: split the columns between threads, then merge the per-thread heaps. Small
  // products run on one thread: waking the others would cost more than it saves.
  std::vector<TopK> merged(nq, TopK(k, nb));
  const idx_t ncblocks = (nb + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel if (worth_threads(static_cast<double>(nq) * nb * base.d()))
  {
    float* tile = nullptr;
    std::vector<TopK> local;
#pragma omp for schedule(dynamic)
    for (idx_t cb = 0; cb < ncblocks; ++cb)
      errors.run([&] {
        if (tile == nullptr) {
          tile = tile_buffer(nq * kColumnBlock);
          local.assign(nq, TopK(k, nb));
        }
        const idx_t c0 = cb * kColumnBlock;
        scan_tile(metric, 0, nq, x, ldx, qnorms.data(), base, c0,
                  std::min(nb, c0 + kColumnBlock), tile, local.data());
      });
#pragma omp critical
    errors.run([&] {
      for (idx_t q = 0; q < static_cast<idx_t>(local.size()); ++q) merged[q].merge(local[q]);
    });
  }
  errors.rethrow();
  for (idx_t q = 0; q < nq; ++q) merged[q].write_sorted(distances + q * k, labels + q * k);
}

}  // namespace retro
