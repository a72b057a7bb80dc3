#include "attention/grouped_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "attention/small_matmul.h"
#include "simd/kernels.h"

namespace retro {
namespace {

inline float widen_value(float x) { return x; }
inline double widen_value(double x) { return x; }
inline float widen_value(bfloat16 x) { return to_float(x); }

template <typename T>
T narrow(Accum<T> x) {
  if constexpr (std::is_same_v<T, bfloat16>)
    return to_bfloat16(x);
  else
    return x;
}

idx_t total_rows(const std::vector<RowRange>& ranges) {
  idx_t total = 0;
  for (const RowRange& r : ranges) total += r.rows;
  return total;
}

// Copies head h of the rows in `ranges` into dst (rows, Dh), widened to the accumulation type.
template <typename T>
void gather(const std::vector<RowRange>& ranges, const T* src, const AttentionLayout& layout,
            idx_t h, Accum<T>* dst) {
  const idx_t dh = layout.head_dim;
  for (const RowRange& range : ranges)
    for (idx_t r = range.first; r < range.first + range.rows; ++r, dst += dh) {
      const T* row = src + (r * layout.heads + h) * dh;
      if constexpr (std::is_same_v<T, Accum<T>>)
        std::memcpy(dst, row, dh * sizeof(T));
      else
        for (idx_t d = 0; d < dh; ++d) dst[d] = widen_value(row[d]);
    }
}

// The inverse of gather: writes src (rows, Dh) to head h of the rows in `ranges`.
template <typename T>
void scatter(const std::vector<RowRange>& ranges, const Accum<T>* src, const AttentionLayout& layout,
             idx_t h, T* dst) {
  const idx_t dh = layout.head_dim;
  for (const RowRange& range : ranges)
    for (idx_t r = range.first; r < range.first + range.rows; ++r, src += dh) {
      T* row = dst + (r * layout.heads + h) * dh;
      if constexpr (std::is_same_v<T, Accum<T>>)
        std::memcpy(row, src, dh * sizeof(T));
      else
        for (idx_t d = 0; d < dh; ++d) row[d] = narrow<T>(src[d]);
    }
}

// In place: row = softmax(scale * row); returns log sum_j exp(scale * row[j]).
float softmax_row(idx_t n, float* row, float scale) {
  return simd::kernels().softmax(static_cast<size_t>(n), row, scale);
}
double softmax_row(idx_t n, double* row, double scale) {
  const double shift = scale * *std::max_element(row, row + n);
  double sum = 0.0;
  for (idx_t j = 0; j < n; ++j) sum += row[j] = std::exp(scale * row[j] - shift);
  for (idx_t j = 0; j < n; ++j) row[j] /= sum;
  return shift + std::log(sum);
}

// row[j] = exp(scale * row[j] - shift); returns the sum.
float exp_row(idx_t n, float* row, float scale, float shift) {
  return simd::kernels().exp_sum(static_cast<size_t>(n), row, scale, shift, row);
}
double exp_row(idx_t n, double* row, double scale, double shift) {
  double sum = 0.0;
  for (idx_t j = 0; j < n; ++j) sum += row[j] = std::exp(scale * row[j] - shift);
  return sum;
}

template <typename A>
A* take(std::vector<A>& buffer, size_t& used, size_t size) {
  A* p = buffer.data() + used;
  used += size;
  return p;
}

// Sets to `value` the rows of data (rows x row_size) that no range of any group covers (the rows
// the kernel does not write): padding tokens, tokens with nothing to attend to.
template <typename T, typename Side>
void fill_uncovered(const std::vector<AttentionGroup>& groups, Side side, idx_t rows,
                    idx_t row_size, T* data, T value) {
  std::vector<RowRange> covered;
  for (const AttentionGroup& group : groups)
    for (const RowRange& range : group.*side) covered.push_back(range);
  std::sort(covered.begin(), covered.end(),
            [](const RowRange& a, const RowRange& b) { return a.first < b.first; });
  covered.push_back({rows, 0});
  idx_t next = 0;
  for (const RowRange& range : covered) {
    if (range.first > next) std::fill(data + next * row_size, data + range.first * row_size, value);
    next = std::max(next, range.first + range.rows);
  }
}

constexpr auto kQueries = &AttentionGroup::queries;
constexpr auto kKeys = &AttentionGroup::keys;

}  // namespace

template <typename T>
void grouped_attention_forward(const std::vector<AttentionGroup>& groups,
                               const AttentionLayout& layout, const T* q, const T* k, const T* v,
                               T* out, Accum<T>* lse) {
  using A = Accum<T>;
  const idx_t heads = layout.heads, dh = layout.head_dim;
  fill_uncovered(groups, kQueries, layout.query_rows, heads * dh, out, narrow<T>(0));
  fill_uncovered(groups, kQueries, layout.query_rows, heads, lse, -std::numeric_limits<A>::infinity());
  const idx_t items = static_cast<idx_t>(groups.size()) * heads;
#pragma omp parallel
  {
    std::vector<A> buffer;
#pragma omp for schedule(dynamic)
    for (idx_t item = 0; item < items; ++item) {
      const AttentionGroup& group = groups[item / heads];
      const idx_t h = item % heads;
      const idx_t nq = total_rows(group.queries), nk = total_rows(group.keys);
      buffer.resize(static_cast<size_t>(2 * nq * dh + 2 * nk * dh + nq * nk + nq));
      size_t used = 0;
      A* qa = take(buffer, used, nq * dh);
      A* ka = take(buffer, used, nk * dh);
      A* va = take(buffer, used, nk * dh);
      A* probs = take(buffer, used, nq * nk);
      A* oa = take(buffer, used, nq * dh);
      A* row_lse = take(buffer, used, nq);
      gather(group.queries, q, layout, h, qa);
      gather(group.keys, k, layout, h, ka);
      gather(group.keys, v, layout, h, va);
      matmul_nt(nq, nk, dh, qa, dh, ka, dh, probs, nk);
      const A scale = static_cast<A>(layout.scale);
      for (idx_t i = 0; i < nq; ++i) row_lse[i] = softmax_row(nk, probs + i * nk, scale);
      matmul_nn(nq, dh, nk, probs, nk, va, dh, oa, dh);
      scatter(group.queries, oa, layout, h, out);
      idx_t i = 0;
      for (const RowRange& range : group.queries)
        for (idx_t r = range.first; r < range.first + range.rows; ++r) lse[r * heads + h] = row_lse[i++];
    }
  }
}

template <typename T>
void grouped_attention_backward(const std::vector<AttentionGroup>& groups,
                                const AttentionLayout& layout, const T* q, const T* k, const T* v,
                                const T* out, const Accum<T>* lse, const T* grad_out, T* grad_q,
                                T* grad_k, T* grad_v) {
  using A = Accum<T>;
  const idx_t heads = layout.heads, dh = layout.head_dim;
  fill_uncovered(groups, kQueries, layout.query_rows, heads * dh, grad_q, narrow<T>(0));
  fill_uncovered(groups, kKeys, layout.key_rows, heads * dh, grad_k, narrow<T>(0));
  fill_uncovered(groups, kKeys, layout.key_rows, heads * dh, grad_v, narrow<T>(0));
  const idx_t items = static_cast<idx_t>(groups.size()) * heads;
#pragma omp parallel
  {
    std::vector<A> buffer;
#pragma omp for schedule(dynamic)
    for (idx_t item = 0; item < items; ++item) {
      const AttentionGroup& group = groups[item / heads];
      const idx_t h = item % heads;
      const idx_t nq = total_rows(group.queries), nk = total_rows(group.keys);
      buffer.resize(static_cast<size_t>(4 * nq * dh + 5 * nk * dh + 2 * nq * nk + nq));
      size_t used = 0;
      A* qa = take(buffer, used, nq * dh);
      A* oa = take(buffer, used, nq * dh);
      A* dout = take(buffer, used, nq * dh);
      A* dq = take(buffer, used, nq * dh);
      A* ka = take(buffer, used, nk * dh);
      A* va = take(buffer, used, nk * dh);
      A* dk = take(buffer, used, nk * dh);
      A* dv = take(buffer, used, nk * dh);
      A* probs = take(buffer, used, nq * nk);
      A* dscores = take(buffer, used, nq * nk);
      A* row_lse = take(buffer, used, nq);
      gather(group.queries, q, layout, h, qa);
      gather(group.queries, out, layout, h, oa);
      gather(group.queries, grad_out, layout, h, dout);
      gather(group.keys, k, layout, h, ka);
      gather(group.keys, v, layout, h, va);
      idx_t i = 0;
      for (const RowRange& range : group.queries)
        for (idx_t r = range.first; r < range.first + range.rows; ++r) row_lse[i++] = lse[r * heads + h];

      const A scale = static_cast<A>(layout.scale);
      matmul_nt(nq, nk, dh, qa, dh, ka, dh, probs, nk);             // scores
      for (i = 0; i < nq; ++i) exp_row(nk, probs + i * nk, scale, row_lse[i]);  // P
      matmul_nt(nq, nk, dh, dout, dh, va, dh, dscores, nk);         // dP = dO V^T
      for (i = 0; i < nq; ++i) {  // dS = scale * P * (dP - <dO, O>)
        A dot = 0;
        for (idx_t d = 0; d < dh; ++d) dot += dout[i * dh + d] * oa[i * dh + d];
        A* ds = dscores + i * nk;
        const A* p = probs + i * nk;
        for (idx_t j = 0; j < nk; ++j) ds[j] = scale * p[j] * (ds[j] - dot);
      }
      matmul_nn(nq, dh, nk, dscores, nk, ka, dh, dq, dh);  // dQ = dS K
      matmul_tn(nk, dh, nq, dscores, nk, qa, dh, dk, dh);  // dK = dS^T Q
      matmul_tn(nk, dh, nq, probs, nk, dout, dh, dv, dh);  // dV = P^T dO
      scatter(group.queries, dq, layout, h, grad_q);
      scatter(group.keys, dk, layout, h, grad_k);
      scatter(group.keys, dv, layout, h, grad_v);
    }
  }
}

#define RETRO_INSTANTIATE(T)                                                                      \
  template void grouped_attention_forward<T>(const std::vector<AttentionGroup>&,                  \
                                             const AttentionLayout&, const T*, const T*, const T*, \
                                             T*, Accum<T>*);                                       \
  template void grouped_attention_backward<T>(                                                    \
      const std::vector<AttentionGroup>&, const AttentionLayout&, const T*, const T*, const T*,    \
      const T*, const Accum<T>*, const T*, T*, T*, T*);
RETRO_INSTANTIATE(float)
RETRO_INSTANTIATE(double)
RETRO_INSTANTIATE(bfloat16)
#undef RETRO_INSTANTIATE

}  // namespace retro
