#include "retro/flat_index.h"

#include <limits>
#include <memory>

#include "distances.h"
#include "new_ids.h"
#include "retro/error.h"

namespace retro {

struct FlatIndex::Packed {
  PackedVectors vectors;
};

FlatIndex::FlatIndex(int d, Metric metric) : d_(d), metric_(metric) {
  RETRO_CHECK_ARG(d > 0, "dimension d must be positive, got %d", d);
  RETRO_CHECK_ARG(metric == Metric::L2 || metric == Metric::InnerProduct, "unknown metric %u",
                  static_cast<unsigned>(metric));
}

FlatIndex::~FlatIndex() = default;

void FlatIndex::add(idx_t n, const float* x, const idx_t* ids) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  check_vectors(n, d_, x, "added vectors");
  check_new_ids(n, ids, ntotal(), [&](auto&& check) {
    for (idx_t id : ids_) check(id);
  });
  const idx_t start = ntotal();
  vectors_.insert(vectors_.end(), x, x + static_cast<size_t>(n) * d_);
  for (idx_t i = 0; i < n; ++i) ids_.push_back(ids != nullptr ? ids[i] : start + i);
  packed_ = std::make_unique<Packed>(Packed{PackedVectors(ntotal(), d_, vectors_.data(), d_)});
}

void FlatIndex::search(idx_t n, const float* x, idx_t k, float* distances, idx_t* labels) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(k > 0, "k must be positive, got %lld", static_cast<long long>(k));
  check_vectors(n, d_, x, "queries");
  if (n == 0) return;
  if (ntotal() == 0) {
    for (idx_t i = 0; i < n * k; ++i) {
      distances[i] = std::numeric_limits<float>::infinity();
      labels[i] = -1;
    }
  } else {
    knn(metric_, n, x, d_, packed_->vectors, k, distances, labels);
    for (idx_t i = 0; i < n * k; ++i)
      if (labels[i] >= 0) labels[i] = ids_[labels[i]];
  }
  to_search_distances(metric_, n * k, distances);
}

void FlatIndex::reset() {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  vectors_.clear();
  ids_.clear();
  packed_.reset();
}

}  // namespace retro
