// The k best (smallest) distances seen so far, ordered by (distance, id) so that the kept set does
// not depend on the order of the pushes: results are the same for any thread count.
#pragma once
#include <algorithm>
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
  explicit TopK(idx_t k) : k_(k) { heap_.reserve(k); }

  // Largest distance that can still enter (+inf until k results are kept).
  float threshold() const {
    return full() ? heap_.front().distance : std::numeric_limits<float>::infinity();
  }
  bool full() const { return static_cast<idx_t>(heap_.size()) == k_; }

  void push(float distance, idx_t id) {
    Scored s{distance, id};
    if (!full()) {
      heap_.push_back(s);
      std::push_heap(heap_.begin(), heap_.end());
    } else if (s < heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end());
      heap_.back() = s;
      std::push_heap(heap_.begin(), heap_.end());
    }
  }

  void merge(const TopK& other) {
    for (const Scored& s : other.heap_) push(s.distance, s.id);
  }

  // Writes k results best first, padding with (+inf, -1); clears the heap.
  void write_sorted(float* distances, idx_t* labels) {
    std::sort_heap(heap_.begin(), heap_.end());
    for (idx_t i = 0; i < k_; ++i) {
      bool have = i < static_cast<idx_t>(heap_.size());
      distances[i] = have ? heap_[i].distance : std::numeric_limits<float>::infinity();
      labels[i] = have ? heap_[i].id : -1;
    }
    heap_.clear();
  }

 private:
  idx_t k_;
  std::vector<Scored> heap_;  // max-heap on (distance, id)
};

}  // namespace retro
