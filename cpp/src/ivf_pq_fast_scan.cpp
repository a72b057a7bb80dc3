// The 4-bit fast-scan of IvfPqIndex: per (query, list) an 8-bit table, a SIMD scan of 16-bit sums
// that keeps only the vectors whose sum can still enter the top-k, and their distances
//   bias + offset + step * sum
// (bias = ||x - c||^2 for L2, -<x, c> for inner product), computed here, in one place, so every
// SIMD level gives bit-identical results.
#include <algorithm>
#include <cmath>

#include "ivf_pq_internal.h"
#include "simd/kernels.h"
#include "top_k.h"

namespace retro {

namespace {

// The largest sum whose distance base + step * sum can be <= threshold, plus one for the rounding
// of the division (a looser limit only lets more vectors reach the exact comparison); -1 when no
// sum can.
int32_t sum_limit(float threshold, float base, float step) {
  const float room = (threshold - base) / step;
  if (!(room >= 0.0f)) return -1;
  return room >= 65534.0f ? 65535 : static_cast<int32_t>(room) + 1;
}

}  // namespace

void IvfPqIndex::fast_scan_lists(const float* lut, const idx_t* probes, const float* probe_dist,
                                 int p0, int p1, TopK& heap, ScanBuffers& buffers) const {
  const simd::Kernels& kern = simd::kernels();
  const CodeLayout layout = layout_of(*this);
  const size_t table_size = static_cast<size_t>(pq_m_) * ksub();
  QuantizedTable& table = *buffers.table4;
  // Inner product: the query's table serves every list. L2: list l's table is
  //   lut + ||r_mj||^2 + 2<c_lm, r_mj> = ||x - c - r||^2 - ||x - c||^2, row by row,
  // its list part computed here from c (d * 16 multiply-adds, cheaper than reading a stored
  // (nlist, pq_m, 16) table from memory at every probe).
  const bool per_list = metric_ == Metric::L2 && by_residual_;
  // Without residuals (by_residual false) the L2 table is ||r_mj||^2 - 2<x_m, r_mj>, also one per
  // query.
  float* query_lut = buffers.query_lut.data();
  if (metric_ == Metric::L2)
    for (size_t i = 0; i < table_size; ++i) query_lut[i] = lut[i] + derived_->pq_norms[i];
  if (!per_list) table.build(metric_ == Metric::L2 ? query_lut : lut);
  for (int p = p0; p < p1; ++p) {
    const idx_t l = probes[p];
    if (l < 0 || lists_[l].size == 0) continue;
    const List& list = lists_[l];
    if (per_list) {
      kern.add_inner_products16(pq_m_, dsub(), &coarse_centroids_[l * d_], derived_->pq_t.data(),
                                2.0f, query_lut, buffers.list_lut.data());
      table.build(buffers.list_lut.data());
    }
    const float base = probe_dist[p] + table.offset(), step = table.step();
    for (idx_t first = 0; first < list.size; first += kFastScanChunk) {
      const int32_t limit = sum_limit(heap.threshold(), base, step);
      if (limit < 0) break;
      const size_t count = kern.pq_scan4(
          std::min(kFastScanChunk, list.size - first), pq_m_, list.codes + layout.bytes(first),
          table.codes(), static_cast<uint16_t>(limit), buffers.sums.data(),
          buffers.survivors.data());
      for (size_t s = 0; s < count; ++s) {
        const uint32_t i = buffers.survivors[s];
        const float dist = base + step * static_cast<float>(buffers.sums[i]);
        if (dist <= heap.threshold()) heap.push(dist, list.ids[first + i]);
      }
    }
  }
}

}  // namespace retro
