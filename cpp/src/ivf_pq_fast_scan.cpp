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

void IvfPqIndex::fast_scan_queries(const float* x, idx_t q0, idx_t q1, const idx_t* probes,
                                   const float* probe_dist, int nprobe, TopK* heaps,
                                   ScanBuffers& buffers) const {
  const simd::Kernels& kern = simd::kernels();
  const CodeLayout layout = layout_of(*this);
  const size_t table_size = static_cast<size_t>(pq_m_) * ksub();
  const bool per_list = metric_ == Metric::L2 && by_residual_;  // as in fast_scan_lists
  const int nb = static_cast<int>(q1 - q0);
  constexpr int G = simd::kMaxScanQueries;
  buffers.block_luts.resize(nb * table_size);
  while (static_cast<int>(buffers.block_tables.size()) < (per_list ? G : nb))
    buffers.block_tables.emplace_back(pq_m_, ksub());
  std::vector<ScanBuffers::Visit>& visits = buffers.visits;
  visits.clear();
  query_tables(nb, x + q0 * d_, buffers.block_luts.data());
  for (int b = 0; b < nb; ++b) {
    const idx_t q = q0 + b;
    float* lut = &buffers.block_luts[b * table_size];
    if (metric_ == Metric::L2)
      for (size_t i = 0; i < table_size; ++i) lut[i] += derived_->pq_norms[i];
    if (!per_list) buffers.block_tables[b].build(lut);
    for (int p = 0; p < nprobe; ++p) {
      const idx_t l = probes[q * nprobe + p];
      if (l >= 0 && lists_[l].size > 0) visits.push_back({l, b, p});
    }
  }
  std::sort(visits.begin(), visits.end(), [](const auto& a, const auto& b) {
    return a.list < b.list || (a.list == b.list && a.query < b.query);
  });
  // The queries of one pass: their tables, heaps and distances base + step * sum.
  const uint8_t* qluts[G];
  uint16_t limits[G];
  size_t counts[G];
  struct Pass {
    TopK* heap;
    float base, step;
  } pass[G];
  uint16_t* sums = buffers.sums.data();
  uint32_t* survivors = buffers.survivors.data();
  for (size_t v = 0; v < visits.size();) {
    size_t end = v;
    while (end < visits.size() && visits[end].list == visits[v].list) ++end;
    const idx_t l = visits[v].list;
    const List& list = lists_[l];
    for (size_t g = v; g < end; g += G) {
      int nq = static_cast<int>(std::min<size_t>(G, end - g));
      for (int j = 0; j < nq; ++j) {
        const ScanBuffers::Visit& visit = visits[g + j];
        QuantizedTable& table = buffers.block_tables[per_list ? j : visit.query];
        if (per_list) {
          kern.add_inner_products16(pq_m_, dsub(), &coarse_centroids_[l * d_], derived_->pq_t.data(),
                                    2.0f, &buffers.block_luts[visit.query * table_size],
                                    buffers.list_lut.data());
          table.build(buffers.list_lut.data());
        }
        qluts[j] = table.codes();
        const float bias = probe_dist[(q0 + visit.query) * nprobe + visit.probe];
        pass[j] = {&heaps[visit.query], bias + table.offset(), table.step()};
      }
      for (idx_t first = 0; first < list.size; first += kFastScanChunk) {
        int kept = 0;  // queries whose threshold still lets some of the list through
        for (int j = 0; j < nq; ++j) {
          const int32_t limit = sum_limit(pass[j].heap->threshold(), pass[j].base, pass[j].step);
          if (limit < 0) continue;
          qluts[kept] = qluts[j];
          pass[kept] = pass[j];
          limits[kept++] = static_cast<uint16_t>(limit);
        }
        nq = kept;
        if (nq == 0) break;
        kern.pq_scan4_queries(std::min(kFastScanChunk, list.size - first), pq_m_,
                              list.codes + layout.bytes(first), nq, qluts, limits, sums, survivors,
                              kFastScanChunk, counts);
        for (int j = 0; j < nq; ++j) {
          TopK& heap = *pass[j].heap;
          const uint16_t* query_sums = sums + j * kFastScanChunk;
          for (size_t s = 0; s < counts[j]; ++s) {
            const uint32_t i = survivors[j * kFastScanChunk + s];
            const float dist = pass[j].base + pass[j].step * static_cast<float>(query_sums[i]);
            if (dist <= heap.threshold()) heap.push(dist, list.ids[first + i]);
          }
        }
      }
    }
    v = end;
  }
}

}  // namespace retro
