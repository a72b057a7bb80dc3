// The one attention kernel behind RETRO's three attentions: a list of groups, each a set of query
// rows that all attend to the same set of key rows (no mask inside a group). The ops differ only
// in how they cut their tensors into groups (attention/retro_attention.cpp); the shift of CCA by
// chunk_size - 1, the neighbour lengths and the chunk boundaries are all in the row ranges.
//
// Row r of a tensor holds H heads of Dh values: head h of row r is at base + (r H + h) Dh. Query
// rows in no group get zero output (and lse -inf); every row is in at most one group, so the
// backward pass writes each gradient row once, without atomics.
#pragma once
#include <type_traits>
#include <vector>

#include "attention/bfloat16.h"
#include "retro/error.h"
#include "retro/types.h"

namespace retro {

struct RowRange {
  idx_t first = 0;
  idx_t rows = 0;
};

struct AttentionGroup {
  std::vector<RowRange> queries;
  std::vector<RowRange> keys;
};

struct AttentionLayout {
  idx_t query_rows = 0, key_rows = 0;  // rows of the query-side and key-side tensors
  idx_t heads = 0, head_dim = 0;
  double scale = 0.0;
};

// out (query_rows, H, Dh), lse (query_rows, H).
template <typename T>
void grouped_attention_forward(const std::vector<AttentionGroup>& groups,
                               const AttentionLayout& layout, const T* q, const T* k, const T* v,
                               T* out, Accum<T>* lse);

// grad_q like q; grad_k, grad_v like k and v.
template <typename T>
void grouped_attention_backward(const std::vector<AttentionGroup>& groups,
                                const AttentionLayout& layout, const T* q, const T* k, const T* v,
                                const T* out, const Accum<T>* lse, const T* grad_out, T* grad_q,
                                T* grad_k, T* grad_v);

// Helpers of the kernel's implementation files.

idx_t total_rows(const std::vector<RowRange>& ranges);

// Pointers to head h of the rows in `ranges`, in order (valid until the next call on this thread).
template <typename T>
const T* const* row_pointers(const std::vector<RowRange>& ranges, const T* src,
                             const AttentionLayout& layout, idx_t h) {
  thread_local std::vector<const T*> pointers;
  pointers.clear();
  for (const RowRange& range : ranges)
    for (idx_t r = range.first; r < range.first + range.rows; ++r)
      pointers.push_back(src + (r * layout.heads + h) * layout.head_dim);
  return pointers.data();
}

// The next `size` elements of a scratch buffer sized beforehand for all of them.
template <typename A>
A* take(std::vector<A>& buffer, size_t& used, size_t size) {
  RETRO_CHECK(used + size <= buffer.size(), "attention scratch buffer too small (internal error)");
  A* p = buffer.data() + used;
  used += size;
  return p;
}

}  // namespace retro
