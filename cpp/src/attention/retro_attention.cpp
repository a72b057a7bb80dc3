// RETRO's three attentions as groups of the one kernel (attention/grouped_attention.h): the index
// arithmetic of each op, its checks, and the dispatch on the element type.
#include "retro/attention.h"

#include <algorithm>
#include <cmath>

#include "attention/grouped_attention.h"
#include "retro/error.h"

namespace retro {
namespace {

idx_t neighbour_length(const RetroAttentionParams& p, idx_t b, idx_t l, idx_t j) {
  if (p.nbr_lens == nullptr) return p.neighbour_len;
  return p.nbr_lens[(b * p.chunks + l) * p.neighbours + j];
}

// First row of neighbour (b, l, j) in a (B, L, K, R) row space.
idx_t neighbour_row(const RetroAttentionParams& p, idx_t b, idx_t l, idx_t j) {
  return ((b * p.chunks + l) * p.neighbours + j) * p.neighbour_len;
}

// CCA: the decoder tokens whose chunk is l attend to all real neighbour tokens of chunk l.
void chunked_cross_groups(const RetroAttentionParams& p, std::vector<AttentionGroup>& groups) {
  const idx_t m = p.chunk_size, first = p.q_offset, end = p.q_offset + p.tokens;
  for (idx_t b = 0; b < p.batch; ++b)
    for (idx_t l = 0; l < p.chunks; ++l) {
      const idx_t lo = std::max(first, l * m + m - 1), hi = std::min(end, (l + 1) * m + m - 1);
      if (lo >= hi) continue;
      AttentionGroup group;
      for (idx_t j = 0; j < p.neighbours; ++j)
        if (idx_t len = neighbour_length(p, b, l, j); len > 0)
          group.keys.push_back({neighbour_row(p, b, l, j), len});
      if (group.keys.empty()) continue;
      group.queries.push_back({b * p.tokens + (lo - first), hi - lo});
      groups.push_back(std::move(group));
    }
}

// Encoder self-attention: each neighbour's real tokens attend to each other.
void neighbour_self_groups(const RetroAttentionParams& p, std::vector<AttentionGroup>& groups) {
  for (idx_t b = 0; b < p.batch; ++b)
    for (idx_t l = 0; l < p.chunks; ++l)
      for (idx_t j = 0; j < p.neighbours; ++j)
        if (idx_t len = neighbour_length(p, b, l, j); len > 0) {
          const RowRange rows{neighbour_row(p, b, l, j), len};
          groups.push_back(AttentionGroup{{rows}, {rows}});
        }
}

// Encoder cross-attention: the real tokens of all neighbours of chunk l attend to the decoder
// positions of chunk l (one group per chunk, so each decoder row's gradient has one writer).
void neighbour_cross_groups(const RetroAttentionParams& p, std::vector<AttentionGroup>& groups) {
  const idx_t m = p.chunk_size;
  for (idx_t b = 0; b < p.batch; ++b)
    for (idx_t l = 0; l < p.chunks; ++l) {
      const idx_t lo = l * m, hi = std::min(p.tokens, (l + 1) * m);
      if (lo >= hi) continue;
      AttentionGroup group;
      for (idx_t j = 0; j < p.neighbours; ++j)
        if (idx_t len = neighbour_length(p, b, l, j); len > 0)
          group.queries.push_back({neighbour_row(p, b, l, j), len});
      if (group.queries.empty()) continue;
      group.keys.push_back({b * p.tokens + lo, hi - lo});
      groups.push_back(std::move(group));
    }
}

std::vector<AttentionGroup> groups_of(const RetroAttentionParams& p) {
  check_attention_params(p, true);
  std::vector<AttentionGroup> groups;
  switch (p.op) {
    case RetroAttention::ChunkedCross: chunked_cross_groups(p, groups); break;
    case RetroAttention::NeighbourSelf: neighbour_self_groups(p, groups); break;
    case RetroAttention::NeighbourCross: neighbour_cross_groups(p, groups); break;
  }
  return groups;
}

// Calls run(T*) for the element type of the CPU kernels.
template <typename Run>
void with_element_type(DType dtype, Run&& run) {
  switch (dtype) {
    case DType::Float32: return run(static_cast<float*>(nullptr));
    case DType::Float64: return run(static_cast<double*>(nullptr));
    case DType::BFloat16: return run(static_cast<bfloat16*>(nullptr));
    case DType::Float16: break;
  }
  RETRO_THROW_ARG("float16 attention runs on CUDA only: use float32, bfloat16 or float64 on the CPU");
}

AttentionLayout layout_of(const RetroAttentionParams& p) {
  return AttentionLayout{query_rows(p), key_rows(p), p.heads, p.head_dim, p.scale};
}

}  // namespace

void check_attention_params(const RetroAttentionParams& p, bool lens_on_host) {
  RETRO_CHECK_ARG(p.batch >= 0 && p.tokens >= 0 && p.chunks >= 0 && p.neighbours >= 0 &&
                      p.neighbour_len >= 0,
                  "attention sizes must be non-negative");
  RETRO_CHECK_ARG(p.heads > 0 && p.head_dim > 0, "attention needs heads > 0 and head_dim > 0");
  RETRO_CHECK_ARG(p.op == RetroAttention::NeighbourSelf || p.chunk_size > 0,
                  "chunk_size must be positive, got %lld",
                  static_cast<long long>(p.chunk_size));
  RETRO_CHECK_ARG(p.q_offset >= 0, "q_offset must be non-negative, got %lld",
                  static_cast<long long>(p.q_offset));
  RETRO_CHECK_ARG(std::isfinite(p.scale), "scale must be finite, got %g", p.scale);
  if (lens_on_host && p.nbr_lens != nullptr) {
    const idx_t n = p.batch * p.chunks * p.neighbours;
    for (idx_t i = 0; i < n; ++i)
      RETRO_CHECK_ARG(p.nbr_lens[i] >= 0 && p.nbr_lens[i] <= p.neighbour_len,
                      "nbr_lens must lie in [0, R=%lld]; element %lld is %d",
                      static_cast<long long>(p.neighbour_len), static_cast<long long>(i),
                      p.nbr_lens[i]);
  }
}

idx_t query_rows(const RetroAttentionParams& p) {
  return p.op == RetroAttention::ChunkedCross ? p.batch * p.tokens
                                              : p.batch * p.chunks * p.neighbours * p.neighbour_len;
}

idx_t key_rows(const RetroAttentionParams& p) {
  return p.op == RetroAttention::NeighbourCross ? p.batch * p.tokens
                                                : p.batch * p.chunks * p.neighbours * p.neighbour_len;
}

void attention_forward(const RetroAttentionParams& p, const AttentionForward& t) {
  const std::vector<AttentionGroup> groups = groups_of(p);
  const AttentionLayout layout = layout_of(p);
  auto run = [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    grouped_attention_forward<T>(groups, layout, static_cast<const T*>(t.q),
                                 static_cast<const T*>(t.k), static_cast<const T*>(t.v),
                                 static_cast<T*>(t.out), static_cast<Accum<T>*>(t.lse));
  };
  with_element_type(p.dtype, run);
}

void attention_backward(const RetroAttentionParams& p, const AttentionBackward& t) {
  const std::vector<AttentionGroup> groups = groups_of(p);
  const AttentionLayout layout = layout_of(p);
  auto run = [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    grouped_attention_backward<T>(
        groups, layout, static_cast<const T*>(t.q), static_cast<const T*>(t.k),
        static_cast<const T*>(t.v), static_cast<const T*>(t.out),
        static_cast<const Accum<T>*>(t.lse), static_cast<const T*>(t.grad_out),
        static_cast<T*>(t.grad_q), static_cast<T*>(t.grad_k), static_cast<T*>(t.grad_v));
  };
  with_element_type(p.dtype, run);
}

}  // namespace retro
