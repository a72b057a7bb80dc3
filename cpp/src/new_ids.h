// The ids an index may take: distinct and non-negative, since -1 marks "no result" and two
// vectors under one id cannot be told apart in a result.
#pragma once
#include <algorithm>
#include <vector>

#include "retro/error.h"
#include "retro/types.h"

namespace retro {

// Throws InvalidArgument if the n new ids (ids, or first_id .. first_id + n - 1 where ids is
// nullptr) include a negative id, one twice, or one already stored; for_each_stored(f) calls f on
// every stored id (one pass over them).
template <class ForEachStored>
void check_new_ids(idx_t n, const idx_t* ids, idx_t first_id, ForEachStored&& for_each_stored) {
  if (n <= 0) return;
  std::vector<idx_t> sorted;
  if (ids != nullptr) {
    sorted.assign(ids, ids + n);
    std::sort(sorted.begin(), sorted.end());
    RETRO_CHECK_ARG(sorted.front() >= 0, "ids must be >= 0 (-1 means no result), got %lld",
                    static_cast<long long>(sorted.front()));
    const auto twice = std::adjacent_find(sorted.begin(), sorted.end());
    RETRO_CHECK_ARG(twice == sorted.end(), "id %lld is given twice among the added vectors",
                    static_cast<long long>(twice == sorted.end() ? 0 : *twice));
  }
  const idx_t last_id = first_id + n - 1;
  for_each_stored([&](idx_t stored) {
    const bool taken = ids != nullptr ? std::binary_search(sorted.begin(), sorted.end(), stored)
                                      : stored >= first_id && stored <= last_id;
    RETRO_CHECK_ARG(!taken, "id %lld is already in the index: ids must be distinct",
                    static_cast<long long>(stored));
  });
}

}  // namespace retro
