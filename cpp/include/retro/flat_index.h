// Exact (brute-force) search: the ground truth the approximate indexes are measured against.
// Threads: searches run concurrently with each other; add and reset wait for them (and they for
// add), through a reader-writer lock.
#pragma once
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "retro/types.h"

namespace retro {

class FlatIndex {
 public:
  FlatIndex(int d, Metric metric = Metric::L2);
  ~FlatIndex();

  // x: (n, d). ids: (n,) or nullptr for sequential ids ntotal .. ntotal + n - 1; ids must be >= 0
  // and distinct, from each other and from the stored ones.
  void add(idx_t n, const float* x, const idx_t* ids = nullptr);
  // x: (n, d) -> distances, labels: (n, k), best first; -1 / worst distance where ntotal < k.
  void search(idx_t n, const float* x, idx_t k, float* distances, idx_t* labels) const;
  void reset();

  int d() const { return d_; }
  Metric metric() const { return metric_; }
  idx_t ntotal() const { return static_cast<idx_t>(ids_.size()); }

 private:
  struct Packed;  // the vectors packed for the GEMM

  int d_;
  Metric metric_;
  std::vector<float> vectors_;
  std::vector<idx_t> ids_;
  std::unique_ptr<Packed> packed_;
  mutable std::shared_mutex mutex_;  // shared: searches; exclusive: add, reset
};

}  // namespace retro
