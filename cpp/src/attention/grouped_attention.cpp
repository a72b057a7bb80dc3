#include "attention/grouped_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "attention/bf16_group.h"
#include "attention/small_matmul.h"
#include "retro/error.h"
#include "retro/simd.h"
#include "simd/kernels.h"

namespace retro {

idx_t total_rows(const std::vector<RowRange>& ranges) {
  idx_t total = 0;
  for (const RowRange& r : ranges) total += r.rows;
  return total;
}

namespace {

idx_t max_rows(const std::vector<RowRange>& ranges) {
  idx_t longest = 0;
  for (const RowRange& r : ranges) longest = std::max(longest, r.rows);
  return longest;
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
        for (idx_t d = 0; d < dh; ++d) dst[d] = widen(row[d]);
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

constexpr idx_t kPanel = simd::kPanel;

// Head h of the rows in `ranges` packed as the columns of a GEMM operand (C = A . rows^T):
// packed[(p Dh + t) kPanel + j] = row_{p kPanel + j}[t], zero past the last row.
template <typename T>
void pack_as_columns(const std::vector<RowRange>& ranges, const T* src,
                     const AttentionLayout& layout, idx_t h, idx_t n, Accum<T>* packed) {
  const idx_t dh = layout.head_dim;
  if constexpr (std::is_same_v<T, float>) {  // the SIMD transpose, from row pointers
    simd::kernels().pack_columns(n, static_cast<int>(dh), row_pointers(ranges, src, layout, h),
                                 packed);
    return;
  }
  std::fill(packed, packed + packed_floats(n, dh), Accum<T>(0));
  idx_t col = 0;
  for (const RowRange& range : ranges)
    for (idx_t r = range.first; r < range.first + range.rows; ++r, ++col) {
      const T* row = src + (r * layout.heads + h) * dh;
      Accum<T>* out = packed + (col / kPanel) * dh * kPanel + col % kPanel;
      for (idx_t t = 0; t < dh; ++t) out[t * kPanel] = widen(row[t]);
    }
}

// Head h of the rows packed as the depth of a GEMM operand (C = A . rows, rows as (n, Dh)):
// packed[(p n + t) kPanel + j] = row_t[p kPanel + j], zero past Dh.
template <typename T>
void pack_as_depth(const std::vector<RowRange>& ranges, const T* src,
                   const AttentionLayout& layout, idx_t h, idx_t n, Accum<T>* packed) {
  const idx_t dh = layout.head_dim;
  idx_t t = 0;
  for (const RowRange& range : ranges)
    for (idx_t r = range.first; r < range.first + range.rows; ++r, ++t) {
      const T* row = src + (r * layout.heads + h) * dh;
      for (idx_t p = 0; p * kPanel < dh; ++p) {
        Accum<T>* out = packed + (p * n + t) * kPanel;
        const idx_t cols = std::min(kPanel, dh - p * kPanel);
        for (idx_t j = 0; j < cols; ++j) out[j] = widen(row[p * kPanel + j]);
        std::fill(out + cols, out + kPanel, Accum<T>(0));
      }
    }
}

// Head h of one range of rows as a matrix (rows, Dh): the tensor itself for float (leading
// dimension H Dh), else widened into `buffer` (leading dimension Dh).
template <typename T>
const Accum<T>* rows_of(const RowRange& range, const T* src, const AttentionLayout& layout,
                        idx_t h, Accum<T>* buffer, idx_t* ld) {
  if constexpr (std::is_same_v<T, Accum<T>>) {
    *ld = layout.heads * layout.head_dim;
    return src + (range.first * layout.heads + h) * layout.head_dim;
  } else {
    gather({range}, src, layout, h, buffer);
    *ld = layout.head_dim;
    return buffer;
  }
}

// C (rows of `ranges`, n) = (head h of those rows) . B^T, B packed (n, Dh): one GEMM per range.
template <typename T>
void rows_times_packed(const std::vector<RowRange>& ranges, const T* src,
                       const AttentionLayout& layout, idx_t h, idx_t n, const Accum<T>* packed,
                       Accum<T>* buffer, Accum<T>* C) {
  for (const RowRange& range : ranges) {
    idx_t ld;
    const Accum<T>* a = rows_of(range, src, layout, h, buffer, &ld);
    gemm_packed(range.rows, n, layout.head_dim, a, ld, packed, C, n);
    C += range.rows * n;
  }
}

// Head h of the rows of `ranges` = A (rows, k) . B^T with B packed (Dh, k): written straight
// into the tensor for float, through `buffer` and a narrowing scatter otherwise.
template <typename T>
void product_to_rows(const std::vector<RowRange>& ranges, const Accum<T>* A, idx_t k,
                     const Accum<T>* packed, const AttentionLayout& layout, idx_t h,
                     Accum<T>* buffer, T* dst) {
  const idx_t dh = layout.head_dim;
  for (const RowRange& range : ranges) {
    if constexpr (std::is_same_v<T, Accum<T>>) {
      gemm_packed(range.rows, dh, k, A, k, packed,
                  dst + (range.first * layout.heads + h) * dh, layout.heads * dh);
    } else {
      gemm_packed(range.rows, dh, k, A, k, packed, buffer, dh);
      scatter({range}, buffer, layout, h, dst);
    }
    A += range.rows * k;
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

// body(group, h, scratch) for every (group, head) pair, spread over the OpenMP threads; each
// thread keeps one scratch buffer across its pairs.
template <typename A, typename Body>
void for_each_group_head(const std::vector<AttentionGroup>& groups, idx_t heads, Body body) {
  const idx_t items = static_cast<idx_t>(groups.size()) * heads;
#pragma omp parallel
  {
    std::vector<A> buffer;
#pragma omp for schedule(dynamic)
    for (idx_t item = 0; item < items; ++item) body(groups[item / heads], item % heads, buffer);
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
  const Bf16Kernel bf16_kernel = active_bf16_kernel();
  for_each_group_head<A>(groups, heads, [&](const AttentionGroup& group, idx_t h,
                                           std::vector<A>& buffer) {
    if constexpr (std::is_same_v<T, bfloat16>)
      if (bf16_kernel != Bf16Kernel::None)
        return bf16_group_forward(bf16_kernel, group, h, layout, q, k, v, out, lse);
    const idx_t nq = total_rows(group.queries), nk = total_rows(group.keys);
    const idx_t longest = max_rows(group.queries);
    buffer.resize(longest * dh + packed_floats(nk, dh) + packed_floats(dh, nk) + nq * nk + nq);
    size_t used = 0;
    A* rows = take(buffer, used, longest * dh);
    A* keys = take(buffer, used, packed_floats(nk, dh));
    A* values = take(buffer, used, packed_floats(dh, nk));
    A* probs = take(buffer, used, nq * nk);
    A* row_lse = take(buffer, used, nq);
    pack_as_columns(group.keys, k, layout, h, nk, keys);
    rows_times_packed(group.queries, q, layout, h, nk, keys, rows, probs);  // scores
    const A scale = static_cast<A>(layout.scale);
    for (idx_t i = 0; i < nq; ++i) row_lse[i] = softmax_row(nk, probs + i * nk, scale);
    pack_as_depth(group.keys, v, layout, h, nk, values);
    product_to_rows(group.queries, probs, nk, values, layout, h, rows, out);  // O = P V
    idx_t i = 0;
    for (const RowRange& range : group.queries)
      for (idx_t r = range.first; r < range.first + range.rows; ++r) lse[r * heads + h] = row_lse[i++];
  });
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
  const Bf16Kernel bf16_kernel = active_bf16_kernel();
  for_each_group_head<A>(groups, heads, [&](const AttentionGroup& group, idx_t h,
                                           std::vector<A>& buffer) {
    if constexpr (std::is_same_v<T, bfloat16>)
      if (bf16_kernel != Bf16Kernel::None)
        return bf16_group_backward(bf16_kernel, group, h, layout, q, k, v, out, lse, grad_out,
                                   grad_q, grad_k, grad_v);
    const idx_t nq = total_rows(group.queries), nk = total_rows(group.keys);
    const size_t key_panels = packed_floats(nk, dh);
    const size_t depth_panels = std::max(packed_floats(dh, nk), packed_floats(dh, nq));
    const idx_t longest = max_rows(group.queries);
    buffer.resize(longest * dh + 2 * key_panels + depth_panels + nk * dh + 3 * nq * nk + 2 * nq);
    size_t used = 0;
    A* rows = take(buffer, used, longest * dh);
    A* keys = take(buffer, used, key_panels);
    A* values = take(buffer, used, key_panels);
    A* depth = take(buffer, used, depth_panels);
    A* key_rows = take(buffer, used, nk * dh);  // narrowing buffer of dK, dV rows
    A* probs = take(buffer, used, nq * nk);
    A* dscores = take(buffer, used, nq * nk);
    A* transposed = take(buffer, used, nq * nk);
    A* row_lse = take(buffer, used, nq);
    A* row_dot = take(buffer, used, nq);  // <dO, O> of each query row
    idx_t i = 0;
    for (const RowRange& range : group.queries)
      for (idx_t r = range.first; r < range.first + range.rows; ++r, ++i) {
        row_lse[i] = lse[r * heads + h];
        const T* o = out + (r * heads + h) * dh;
        const T* g = grad_out + (r * heads + h) * dh;
        A dot = 0;
        for (idx_t d = 0; d < dh; ++d) dot += widen(g[d]) * widen(o[d]);
        row_dot[i] = dot;
      }

    const A scale = static_cast<A>(layout.scale);
    pack_as_columns(group.keys, k, layout, h, nk, keys);
    rows_times_packed(group.queries, q, layout, h, nk, keys, rows, probs);  // scores
    for (i = 0; i < nq; ++i) exp_row(nk, probs + i * nk, scale, row_lse[i]);  // P
    pack_as_columns(group.keys, v, layout, h, nk, values);
    rows_times_packed(group.queries, grad_out, layout, h, nk, values, rows, dscores);  // dP
    for (i = 0; i < nq; ++i) {  // dS = scale * P * (dP - <dO, O>)
      A* ds = dscores + i * nk;
      const A* p = probs + i * nk;
      for (idx_t j = 0; j < nk; ++j) ds[j] = scale * p[j] * (ds[j] - row_dot[i]);
    }
    // dV = P^T dO and dK = dS^T Q: the transposed scores times rows packed as depth
    pack_as_depth(group.queries, grad_out, layout, h, nq, depth);
    transpose(nq, nk, probs, nk, transposed);
    product_to_rows(group.keys, transposed, nq, depth, layout, h, key_rows, grad_v);
    pack_as_depth(group.queries, q, layout, h, nq, depth);
    transpose(nq, nk, dscores, nk, transposed);
    product_to_rows(group.keys, transposed, nq, depth, layout, h, key_rows, grad_k);
    pack_as_depth(group.keys, k, layout, h, nk, depth);
    product_to_rows(group.queries, dscores, nk, depth, layout, h, rows, grad_q);  // dQ = dS K
  });
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
