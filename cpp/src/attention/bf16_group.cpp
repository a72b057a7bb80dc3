#include "attention/bf16_group.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention/bf16_matmul.h"

namespace retro {
namespace {

// Head h of the rows in `ranges` as the rows of a product's left operand (row stride `padded`).
void copy_rows(const std::vector<RowRange>& ranges, const bfloat16* src,
               const AttentionLayout& layout, idx_t h, idx_t padded, bfloat16* dst) {
  const bfloat16* const* rows = row_pointers(ranges, src, layout, h);
  const idx_t n = total_rows(ranges);
  for (idx_t i = 0; i < n; ++i) bf16::copy_row(layout.head_dim, padded, rows[i], dst + i * padded);
}

// Writes product rows (row stride ldc) to head h of the rows in `ranges`, row i scaled by
// factors[i] (1 where factors is null).
void narrow_rows(const float* C, idx_t ldc, const float* factors,
                 const std::vector<RowRange>& ranges, const AttentionLayout& layout, idx_t h,
                 bfloat16* dst) {
  const idx_t dh = layout.head_dim;
  idx_t i = 0;
  for (const RowRange& range : ranges)
    for (idx_t r = range.first; r < range.first + range.rows; ++r, ++i)
      bf16::narrow_row(dh, dh, C + i * ldc, factors ? factors[i] : 1.0f,
                       dst + (r * layout.heads + h) * dh);
}

// Packs head h of the rows in `ranges` (n of them) as the depth of a right operand that meets a
// split [hi | lo] left operand: the rows, zero rows up to `padded`, the rows again.
void pack_depth_twice(const std::vector<RowRange>& ranges, const bfloat16* src,
                      const AttentionLayout& layout, idx_t h, idx_t padded, const bfloat16* zeros,
                      bfloat16* packed) {
  thread_local std::vector<const bfloat16*> twice;
  const idx_t n = total_rows(ranges);
  const bfloat16* const* rows = row_pointers(ranges, src, layout, h);
  twice.assign(rows, rows + n);
  twice.resize(padded, zeros);
  twice.insert(twice.end(), rows, rows + n);
  bf16::pack_depth(padded + n, layout.head_dim, twice.data(), packed);
}

// Per-thread scratch, carved anew for each (group, head).
struct Scratch {
  std::vector<bfloat16> operands;
  std::vector<float> products;
  size_t operands_used = 0, products_used = 0;

  void reset(size_t operand_size, size_t product_size) {
    operands.resize(operand_size);
    products.resize(product_size);
    operands_used = products_used = 0;
  }
  bfloat16* operand(size_t size) { return take(operands, operands_used, size); }
  float* product(size_t size) { return take(products, products_used, size); }
};

thread_local Scratch scratch;

}  // namespace

// S = Q K^T; P = exp(scale S - shift) unnormalized (largest entry 1) as the operand of P V; each
// output row divided by its sum when narrowed (the order of PyTorch's flash kernel).
void bf16_group_forward(Bf16Kernel kernel, const AttentionGroup& group, idx_t h,
                        const AttentionLayout& layout, const bfloat16* q, const bfloat16* k,
                        const bfloat16* v, bfloat16* out, float* lse) {
  const idx_t heads = layout.heads, dh = layout.head_dim;
  const idx_t nq = total_rows(group.queries), nk = total_rows(group.keys);
  const idx_t rows = bf16::padded_rows(nq), dh_depth = bf16::padded_depth(dh);
  const idx_t nk_depth = bf16::padded_depth(nk), score_cols = bf16::padded_rows(nk);
  const idx_t out_cols = bf16::padded_rows(dh);
  const size_t key_size = bf16::packed_size(nk, dh), value_size = bf16::packed_size(dh, nk);
  scratch.reset(rows * dh_depth + key_size + value_size + rows * nk_depth,
                  rows * (score_cols + out_cols) + 2 * nq);
  bfloat16* queries = scratch.operand(rows * dh_depth);
  bfloat16* keys = scratch.operand(key_size);
  bfloat16* values = scratch.operand(value_size);
  bfloat16* probs = scratch.operand(rows * nk_depth);
  float* scores = scratch.product(rows * score_cols);
  float* outputs = scratch.product(rows * out_cols);
  float* inverse_sums = scratch.product(nq);
  float* shifts = scratch.product(nq);

  copy_rows(group.queries, q, layout, h, dh_depth, queries);
  bf16::pack_rows(nk, dh, row_pointers(group.keys, k, layout, h), keys);
  bf16::gemm(kernel, nq, nk, dh, queries, dh_depth, keys, scores, score_cols);
  bf16::pack_depth(nk, dh, row_pointers(group.keys, v, layout, h), values);
  const float scale = static_cast<float>(layout.scale);
  for (idx_t i = 0; i < nq; ++i) {
    const float sum = bf16::exp_row(nk, nk_depth, scores + i * score_cols, scale,
                                    probs + i * nk_depth, &shifts[i]);
    inverse_sums[i] = 1.0f / sum;
    shifts[i] += std::log(sum);  // now the lse
  }
  bf16::gemm(kernel, nq, dh, nk, probs, nk_depth, values, outputs, out_cols);
  narrow_rows(outputs, out_cols, inverse_sums, group.queries, layout, h, out);
  idx_t i = 0;
  for (const RowRange& range : group.queries)
    for (idx_t r = range.first; r < range.first + range.rows; ++r, ++i)
      lse[r * heads + h] = shifts[i];
}

// Works on the transposed scores, S^T = K Q^T and dP^T = V dO^T (one row per key), so that P^T and
// dS^T come out as the row-major left operands of dV = P^T dO and dK = dS^T Q; only dQ = dS K
// needs a transpose (of dS^T). P and dS enter the products as hi + lo bfloat16 pairs: the left
// operand's depth holds [hi | lo] and the right operand's depth lists its rows twice.
void bf16_group_backward(Bf16Kernel kernel, const AttentionGroup& group, idx_t h,
                         const AttentionLayout& layout, const bfloat16* q, const bfloat16* k,
                         const bfloat16* v, const bfloat16* out, const float* lse,
                         const bfloat16* grad_out, bfloat16* grad_q, bfloat16* grad_k,
                         bfloat16* grad_v) {
  const idx_t heads = layout.heads, dh = layout.head_dim;
  const idx_t nq = total_rows(group.queries), nk = total_rows(group.keys);
  const idx_t key_rows = bf16::padded_rows(nk), query_rows = bf16::padded_rows(nq);
  const idx_t dh_depth = bf16::padded_depth(dh), nq_depth = bf16::padded_depth(nq);
  const idx_t nk_depth = bf16::padded_depth(nk), dh_cols = bf16::padded_rows(dh);
  const size_t query_cols = bf16::packed_size(nq, dh);
  const size_t query_depth = bf16::packed_size(dh, 2 * nq_depth);  // split: twice the depth
  const size_t key_depth = bf16::packed_size(dh, 2 * nk_depth);
  const idx_t longest = key_rows > query_rows ? key_rows : query_rows;
  scratch.reset(2 * key_rows * dh_depth + 2 * (query_cols + query_depth) + key_depth +
                      4 * key_rows * nq_depth + 2 * query_rows * nk_depth + dh,
                  2 * key_rows * query_rows + longest * dh_cols + 2 * query_rows);
  bfloat16* keys = scratch.operand(key_rows * dh_depth);
  bfloat16* values = scratch.operand(key_rows * dh_depth);
  bfloat16* queries_cols = scratch.operand(query_cols);
  bfloat16* grads_cols = scratch.operand(query_cols);
  bfloat16* queries_depth = scratch.operand(query_depth);
  bfloat16* grads_depth = scratch.operand(query_depth);
  bfloat16* keys_depth = scratch.operand(key_depth);
  bfloat16* probs_t = scratch.operand(2 * key_rows * nq_depth);    // [hi | lo] rows
  bfloat16* dscores_t = scratch.operand(2 * key_rows * nq_depth);  // [hi | lo] rows
  bfloat16* dscores = scratch.operand(2 * query_rows * nk_depth);  // [hi | lo] rows
  bfloat16* zeros = scratch.operand(dh);
  float* scores_t = scratch.product(key_rows * query_rows);
  float* dprobs_t = scratch.product(key_rows * query_rows);
  float* grads = scratch.product(longest * dh_cols);
  float* row_lse = scratch.product(query_rows);
  float* dots = scratch.product(query_rows);  // <dO, O> of each query row
  std::fill(zeros, zeros + dh, bfloat16{0});

  idx_t i = 0;
  for (const RowRange& range : group.queries)
    for (idx_t r = range.first; r < range.first + range.rows; ++r, ++i) {
      row_lse[i] = lse[r * heads + h];
      const idx_t at = (r * heads + h) * dh;
      dots[i] = bf16::dot(dh, grad_out + at, out + at);
    }
  copy_rows(group.keys, k, layout, h, dh_depth, keys);
  copy_rows(group.keys, v, layout, h, dh_depth, values);
  bf16::pack_rows(nq, dh, row_pointers(group.queries, q, layout, h), queries_cols);
  bf16::pack_rows(nq, dh, row_pointers(group.queries, grad_out, layout, h), grads_cols);
  pack_depth_twice(group.queries, q, layout, h, nq_depth, zeros, queries_depth);
  pack_depth_twice(group.queries, grad_out, layout, h, nq_depth, zeros, grads_depth);
  pack_depth_twice(group.keys, k, layout, h, nk_depth, zeros, keys_depth);

  bf16::gemm(kernel, nk, nq, dh, keys, dh_depth, queries_cols, scores_t, query_rows);   // S^T
  bf16::gemm(kernel, nk, nq, dh, values, dh_depth, grads_cols, dprobs_t, query_rows);  // dP^T
  const float scale = static_cast<float>(layout.scale);
  for (idx_t j = 0; j < nk; ++j)
    bf16::softmax_gradient_row(nq, nq_depth, scores_t + j * query_rows, dprobs_t + j * query_rows,
                               row_lse, dots, scale, probs_t + 2 * j * nq_depth,
                               dscores_t + 2 * j * nq_depth);
  const idx_t split_nq = 2 * nq_depth, split_nk = 2 * nk_depth;
  bf16::gemm(kernel, nk, dh, nq_depth + nq, probs_t, split_nq, grads_depth, grads, dh_cols);  // dV
  narrow_rows(grads, dh_cols, nullptr, group.keys, layout, h, grad_v);
  bf16::gemm(kernel, nk, dh, nq_depth + nq, dscores_t, split_nq, queries_depth, grads, dh_cols);
  narrow_rows(grads, dh_cols, nullptr, group.keys, layout, h, grad_k);  // dK = dS^T Q
  bf16::transpose(nk, nq, dscores_t, split_nq, dscores, split_nk, nk_depth);
  bf16::transpose(nk, nq, dscores_t + nq_depth, split_nq, dscores + nk_depth, split_nk, nk_depth);
  bf16::gemm(kernel, nq, dh, nk_depth + nk, dscores, split_nk, keys_depth, grads, dh_cols);
  narrow_rows(grads, dh_cols, nullptr, group.queries, layout, h, grad_q);  // dQ = dS K
}

}  // namespace retro
