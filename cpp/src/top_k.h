// The k best (smallest) distances seen so far, ordered by (distance, id) so that the kept set does
// not depend on the order of the pushes: results are the same for any thread count.
//
// Small k keeps a max-heap. Large k (the k * k_factor candidates of a re-ranked search: hundreds)
// keeps a reservoir instead: pushes under the threshold are appended to a buffer of 2k entries,
// and a full buffer is cut back to its k best by a selection, which costs O(k) per k pushes where
// the heap costs O(log k) per push. The kept set is the same; only the threshold, which tightens
// at each cut rather than at each push, is looser in between.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "retro/types.h"

namespace retro {

struct Scored {
  float distance;
  idx_t id;
  bool operator<(const Scored& o) const {
    return distance < o.distance || (distance == o.distance && id < o.id);
  }
};

class TopK {
 public:
  static constexpr idx_t kMaxHeapK = 64;  // beyond this k, a reservoir

  // most: how many results can exist at all (e.g. the vectors of the index); the buffers hold
  // min(k, most), so a huge k costs memory only for its output, where write_* pad with -1.
  explicit TopK(idx_t k, idx_t most = std::numeric_limits<idx_t>::max())
      : k_(std::min(k, std::max<idx_t>(most, 1))),
        out_k_(k),
        reservoir_(k_ > kMaxHeapK),
        kept_(reservoir_ ? 2 * k_ : k_),
        cut_scratch_(reservoir_ ? 2 * k_ : 0) {}

  // Largest distance that can still enter (+inf until k results are kept; for a reservoir, until
  // its first cut).
  float threshold() const { return threshold_; }
  idx_t k() const { return out_k_; }
  bool full() const { return static_cast<idx_t>(size_) >= k_; }

  void push(float distance, idx_t id) {
    if (reservoir_) {
      if (distance > threshold_) return;
      kept_[size_++] = Scored{distance, id};
      if (size_ == kept_.size()) cut();
      return;
    }
    const Scored s{distance, id};
    if (!full()) {
      kept_[size_++] = s;
      std::push_heap(kept_.begin(), kept_.begin() + size_);
      if (full()) threshold_ = kept_.front().distance;
    } else if (s < kept_.front()) {
      std::pop_heap(kept_.begin(), kept_.end());
      kept_.back() = s;
      std::push_heap(kept_.begin(), kept_.end());
      threshold_ = kept_.front().distance;
    }
  }

  void merge(const TopK& other) {
    for (size_t i = 0; i < other.size_; ++i) push(other.kept_[i].distance, other.kept_[i].id);
  }

  // Writes the ids of the k results in no particular order (for a re-ranking that re-scores them
  // all), padding with -1; clears the kept set.
  void write_unordered(idx_t* labels) {
    if (reservoir_ && static_cast<idx_t>(size_) > k_) cut();
    for (idx_t i = 0; i < out_k_; ++i)
      labels[i] = i < static_cast<idx_t>(size_) ? kept_[i].id : -1;
    clear();
  }

  // Writes k results best first, padding with (+inf, -1); clears the kept set.
  void write_sorted(float* distances, idx_t* labels) {
    if (reservoir_ && static_cast<idx_t>(size_) > k_) cut();
    if (reservoir_)
      std::sort(kept_.begin(), kept_.begin() + size_);
    else
      std::sort_heap(kept_.begin(), kept_.begin() + size_);
    for (idx_t i = 0; i < out_k_; ++i) {
      bool have = i < static_cast<idx_t>(size_);
      distances[i] = have ? kept_[i].distance : std::numeric_limits<float>::infinity();
      labels[i] = have ? kept_[i].id : -1;
    }
    clear();
  }

 private:
  void clear() {
    size_ = 0;
    threshold_ = std::numeric_limits<float>::infinity();
  }

  // Reservoir: keeps the k best of the buffer, unordered. The k-th distance t is found by a
  // histogram of the distances over [min, max] in kBuckets equal buckets (the bucket of a distance
  // is monotonic in it), then a selection inside the one bucket that holds the k-th; every entry
  // under t is kept, and of those at t the smallest ids, as many as the k still need. All passes
  // are linear and nearly branch-free: a selection over the whole buffer mispredicts at every
  // comparison.
  void cut() {
    const size_t k = static_cast<size_t>(k_);
    float lows[4], highs[4];  // four independent chains: one min / max waits on the previous
    for (int u = 0; u < 4; ++u) lows[u] = highs[u] = kept_[0].distance;
    for (size_t i = 0; i < size_; ++i) {
      lows[i % 4] = std::min(lows[i % 4], kept_[i].distance);
      highs[i % 4] = std::max(highs[i % 4], kept_[i].distance);
    }
    const float lo = std::min(std::min(lows[0], lows[1]), std::min(lows[2], lows[3]));
    const float hi = std::max(std::max(highs[0], highs[1]), std::max(highs[2], highs[3]));
    constexpr int kBuckets = 256;
    float scale = hi > lo ? static_cast<float>(kBuckets - 1) / (hi - lo) : 0.0f;
    if (!std::isfinite(scale)) scale = 0.0f;  // a range too small (or infinite) to split
    auto bucket = [&](float d) {
      const float x = (d - lo) * scale;  // >= 0; an infinite distance (NaN here) goes last
      return x < static_cast<float>(kBuckets - 1) ? static_cast<int>(x) : kBuckets - 1;
    };
    uint32_t histogram[kBuckets] = {};
    for (size_t i = 0; i < size_; ++i) ++histogram[bucket(kept_[i].distance)];
    int b = 0;
    size_t before = 0;  // entries in the buckets under b
    while (before + histogram[b] < k) before += histogram[b++];
    size_t m = 0;
    for (size_t i = 0; i < size_; ++i) {
      cut_scratch_[m] = kept_[i].distance;
      m += bucket(kept_[i].distance) == b;
    }
    const auto kth = cut_scratch_.begin() + (k - before - 1);  // the k-th overall
    std::nth_element(cut_scratch_.begin(), kth, cut_scratch_.begin() + m);
    const float t = *kth;
    size_t below = 0;
    for (size_t i = 0; i < size_; ++i) {
      const Scored s = kept_[i];
      kept_[below] = s;
      below += s.distance < t;
      if (s.distance == t) cut_ties_.push_back(s);
    }
    std::sort(cut_ties_.begin(), cut_ties_.end());
    for (size_t i = 0; below < k && i < cut_ties_.size(); ++i) kept_[below++] = cut_ties_[i];
    cut_ties_.clear();
    size_ = below;
    threshold_ = t;
  }

  idx_t k_;      // results kept: min(k, most)
  idx_t out_k_;  // results written
  bool reservoir_;
  std::vector<Scored> kept_;  // [0, size_): heap: a max-heap on (distance, id); reservoir: unordered
  size_t size_ = 0;
  std::vector<float> cut_scratch_;  // reservoir: a cut's distances in the bucket of the k-th
  std::vector<Scored> cut_ties_;  // reservoir: the entries at the k-th distance during a cut
  float threshold_ = std::numeric_limits<float>::infinity();
};

}  // namespace retro
