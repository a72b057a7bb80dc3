// Shared vocabulary of the index API. Vectors are row-major float32: x[i * d + j].
#pragma once
#include <cstdint>

namespace retro {

using idx_t = int64_t;  // vector ids and counts, -1 = no result

enum class Metric : uint32_t {
  L2 = 0,            // squared Euclidean distance, smaller is better
  InnerProduct = 1,  // dot product, larger is better
};

// Order of results: best first. Missing results have label -1 and the worst possible distance.
inline bool is_similarity(Metric m) { return m == Metric::InnerProduct; }

}  // namespace retro
