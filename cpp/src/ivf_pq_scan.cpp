// The search of IvfPqIndex once the probes are known (search_preassigned): the 8-bit scan of a
// query's probed lists, the exact re-ranking of its candidates, and the three ways of sharing the
// queries between threads, each a named function of PreassignedSearch:
//   by_query_blocks  4-bit, long lists: blocks of queries, each list scanned once per block
//   by_query         at least one query per thread: query by query
//   by_probe         fewer queries than threads: each query's probes split between threads
#include <omp.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "ivf_pq_internal.h"
#include "parallel_errors.h"
#include "retro/error.h"
#include "simd/kernels.h"
#include "top_k.h"

namespace retro {

namespace {

constexpr idx_t kFilterChunk = 8 * IvfPqIndex::kBlock;  // vectors per filter call (limit refresh)
// From this many candidates a lone query's re-ranking is shared between threads (~400 KB of
// float32 rows at d = 384: far more than waking the threads costs).
constexpr idx_t kSplitRerankCandidates = 256;
// Below this many vectors per query, quantizing the table costs more than the filter saves.
constexpr idx_t kFilterMinVectors = 16 * IvfPqIndex::kBlock;
// Queries whose look-up tables are computed together (Kernels::inner_products_t): 4 x 48 KB for
// PQ48 with 8 bits, held in L2 while they are scanned.
constexpr idx_t kTableQueries = 4;

// The float distance of vector i of a list, summed in the order of simd pq_scan8.
float scan_one(int pq_m, const uint8_t* codes, const float* terms, const float* lut, float bias,
               idx_t i) {
  const uint8_t* block = codes + (i / IvfPqIndex::kBlock) * pq_m * IvfPqIndex::kBlock;
  const idx_t lane = i % IvfPqIndex::kBlock;
  float acc = terms != nullptr ? bias + terms[i] : bias;
  for (int m = 0; m < pq_m; ++m) acc += lut[m * 256 + block[m * IvfPqIndex::kBlock + lane]];
  return acc;
}

// Per-thread scratch of a query's last step: the re-ranked top-k, the scanned candidates' ids and
// one re-ranking row.
struct RerankScratch {
  RerankScratch(idx_t k, idx_t k_scan, int d, bool reranking)
      : best(k, reranking ? k_scan : 1), candidates(reranking ? k_scan : 0), row(reranking ? d : 0) {}
  TopK best;
  std::vector<idx_t> candidates;
  std::vector<float> row;
};

}  // namespace

// Scans probes [p0, p1) of one query into heap. With a quantized table the filter runs first and
// only its survivors are scored exactly; otherwise every vector is scored.
void IvfPqIndex::scan_lists(const float* lut, const QuantizedTable* qtable, const idx_t* probes,
                            const float* probe_dist, int p0, int p1, TopK& heap,
                            ScanBuffers& buffers) const {
  if (pq_bits_ == 4) return fast_scan_lists(lut, probes, probe_dist, p0, p1, heap, buffers);
  const simd::Kernels& kern = simd::kernels();
  for (int p = p0; p < p1; ++p) {
    const idx_t l = probes[p];
    if (l < 0 || lists_[l].size == 0) continue;
    const List& list = lists_[l];
    const float bias = probe_dist[p];  // ||x - c||^2, or -<x, c>
    if (qtable != nullptr) {
      uint32_t* survivors = buffers.survivors.data();
      for (idx_t first = 0; first < list.size; first += kFilterChunk) {
        const float* terms = list.terms != nullptr ? list.terms + first : nullptr;
        const size_t count = kern.pq_filter8(
            std::min(kFilterChunk, list.size - first), pq_m_, list.codes + first * pq_m_,
            qtable->codes(), bias, terms, qtable->offset(), qtable->step(),
            qtable->limit(heap.threshold(), bias), qtable->term_slack(), survivors);
        for (size_t s = 0; s < count; ++s) {
          const idx_t i = first + survivors[s];
          const float dist = scan_one(pq_m_, list.codes, list.terms, lut, bias, i);
          if (dist <= heap.threshold()) heap.push(dist, list.ids[i]);
        }
      }
      continue;
    }
    const size_t nblocks = (list.size + kBlock - 1) / kBlock;
    float* list_dist = buffers.list_dist.data();
    kern.pq_scan8(nblocks, pq_m_, list.codes, lut, bias, list.terms, list_dist);
    float threshold = heap.threshold();
    for (idx_t i = 0; i < list.size; ++i)
      if (list_dist[i] <= threshold) {
        heap.push(list_dist[i], list.ids[i]);
        threshold = heap.threshold();
      }
  }
}

// One call of search_preassigned: its arguments, and what its strategies share.
struct IvfPqIndex::PreassignedSearch {
  const IvfPqIndex& index;
  idx_t n;
  const float* x;         // (n, ivf_d) the scan's queries
  const float* x_rerank;  // (n, d) the queries as given
  idx_t k;
  const idx_t* probes;      // (n, nprobe)
  const float* probe_dist;  // (n, nprobe)
  int nprobe;
  const IvfPqSearchParams& params;
  float* distances;  // (n, k)
  idx_t* labels;     // (n, k)

  bool reranking = params.rerank_vectors != nullptr;
  idx_t most = std::max<idx_t>(index.ntotal_, 1);  // results that can exist: bounds the buffers
  // candidates scanned per query: k * k_factor re-ranked ones (at most the index), or k
  idx_t k_scan = !reranking ? k : k >= (most + params.k_factor - 1) / params.k_factor
                                      ? most
                                      : k * params.k_factor;
  bool filtering = index.pq_bits_ == 8 && simd::kernels().pq_filter8 != nullptr &&
                   index.pq_m_ <= QuantizedTable::kMaxPqM;
  size_t table_size = static_cast<size_t>(index.pq_m_) * index.ksub();
  idx_t max_list = [this] {  // the longest list: the 8-bit scan's distance buffer
    idx_t longest = 0;
    for (const List& list : index.lists_) longest = std::max(longest, list.size);
    return longest;
  }();
  idx_t out_of_range = -1;  // the largest candidate id without a re-ranking row (-1: none)

  RerankScratch scratch() const { return RerankScratch(k, k_scan, index.d_in_, reranking); }

  ScanBuffers make_buffers() const {
    ScanBuffers buffers;
    if (index.pq_bits_ == 4) {
      buffers.query_lut.resize(table_size);
      buffers.list_lut.resize(table_size);
      buffers.table4 = std::make_unique<QuantizedTable>(index.pq_m_, index.ksub());
      buffers.sums.resize(simd::kMaxScanQueries * kFastScanChunk);
      buffers.survivors.resize(simd::kMaxScanQueries * kFastScanChunk);
      return buffers;
    }
    if (filtering) buffers.survivors.resize(kFilterChunk);
    buffers.list_dist.resize((max_list + kBlock - 1) / kBlock * kBlock);
    return buffers;
  }

  idx_t vectors_in(idx_t q) const {  // vectors in query q's probed lists
    idx_t total = 0;
    for (int p = 0; p < nprobe; ++p)
      if (probes[q * nprobe + p] >= 0) total += index.lists_[probes[q * nprobe + p]].size;
    return total;
  }

  bool long_lists() const {  // on average at least a fast-scan chunk per probe
    double probed = 0.0;
    for (idx_t q = 0; q < n; ++q) probed += static_cast<double>(vectors_in(q));
    return probed >= static_cast<double>(n) * nprobe * kFastScanChunk;
  }

  // Writes query q's results: the scanned top-k, or the re-ranking of its candidates (shared out
  // between threads with split: for a query on its own, reading hundreds of scattered rows is the
  // larger part of its time).
  void finish(idx_t q, TopK& scanned, RerankScratch& s, ParallelErrors& errors,
              bool split = false) {
    if (!reranking) return scanned.write_sorted(distances + q * k, labels + q * k);
    scanned.write_unordered(s.candidates.data());
    const float* xq = x_rerank + q * index.d_in_;
    idx_t bad = -1;
    if (split) {
#pragma omp parallel
      errors.run([&] {
        TopK local(k, k_scan);
        std::vector<float> local_row(index.d_in_);
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const idx_t c0 = k_scan * t / nt, c1 = k_scan * (t + 1) / nt;
        const idx_t local_bad = index.rerank_query(xq, s.candidates.data() + c0, c1 - c0, params,
                                                   local, local_row);
#pragma omp critical
        {
          s.best.merge(local);
          bad = std::max(bad, local_bad);
        }
      });
      errors.rethrow();
    } else {
      bad = index.rerank_query(xq, s.candidates.data(), k_scan, params, s.best, s.row);
    }
    s.best.write_sorted(distances + q * k, labels + q * k);
    if (bad >= 0) {
#pragma omp critical
      out_of_range = std::max(out_of_range, bad);
    }
  }

  // 4-bit: blocks of `block` queries, each scanned list by list for all its queries that probe the
  // list; dynamic scheduling evens out the blocks' costs.
  void by_query_blocks(idx_t block) {
    ParallelErrors errors;
#pragma omp parallel
    {
      std::optional<ScanBuffers> buffers;
      std::vector<TopK> heaps;
      std::optional<RerankScratch> s;
#pragma omp for schedule(dynamic)
      for (idx_t q0 = 0; q0 < n; q0 += block)
        errors.run([&] {
          if (!s) {
            buffers.emplace(make_buffers());
            heaps.assign(block, TopK(k_scan, most));
            s.emplace(scratch());
          }
          const idx_t q1 = std::min(n, q0 + block);
          index.fast_scan_queries(x, q0, q1, probes, probe_dist, nprobe, heaps.data(), *buffers);
          for (idx_t q = q0; q < q1; ++q) finish(q, heaps[q - q0], *s, errors);
        });
    }
    errors.rethrow();
  }

  // A group of up to kTableQueries queries per thread at a time (fewer where the queries are too
  // few to keep every thread busy): their look-up tables computed together, then query by query.
  void by_query() {
    const idx_t group = std::clamp<idx_t>(n / omp_get_max_threads(), 1, kTableQueries);
    ParallelErrors errors;
#pragma omp parallel
    {
      std::vector<float> luts;
      std::optional<QuantizedTable> qtable;
      std::optional<ScanBuffers> buffers;
      std::optional<TopK> heap;
      std::optional<RerankScratch> s;
#pragma omp for schedule(dynamic)
      for (idx_t q0 = 0; q0 < n; q0 += group)
        errors.run([&] {
          if (!s) {
            luts.resize(group * table_size);
            qtable.emplace(index.pq_m_);
            buffers.emplace(make_buffers());
            heap.emplace(k_scan, most);
            s.emplace(scratch());
          }
          const idx_t q1 = std::min(n, q0 + group);
          index.query_tables(q1 - q0, x + q0 * index.d_, luts.data());
          for (idx_t q = q0; q < q1; ++q) {
            const float* lut = luts.data() + (q - q0) * table_size;
            const bool filter = filtering && vectors_in(q) >= kFilterMinVectors;
            if (filter) qtable->build(lut);
            index.scan_lists(lut, filter ? &*qtable : nullptr, probes + q * nprobe,
                             probe_dist + q * nprobe, 0, nprobe, *heap, *buffers);
            finish(q, *heap, *s, errors);
          }
        });
    }
    errors.rethrow();
  }

  // Few queries: the probes of each query are split between threads, then merged; small scans
  // stay on the calling thread.
  void by_probe() {
    std::vector<float> lut(table_size);
    QuantizedTable qtable(index.pq_m_);
    TopK merged(k_scan, most);
    RerankScratch s = scratch();
    ParallelErrors errors;
    for (idx_t q = 0; q < n; ++q) {
      index.query_tables(1, x + q * index.d_, lut.data());
      const idx_t vectors = vectors_in(q);
      const bool filter = filtering && vectors >= kFilterMinVectors;
      if (filter) qtable.build(lut.data());
#pragma omp parallel if (worth_threads(double(vectors) * index.pq_m_))
      errors.run([&] {
        ScanBuffers buffers = make_buffers();
        TopK heap(k_scan, most);
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        index.scan_lists(lut.data(), filter ? &qtable : nullptr, probes + q * nprobe,
                         probe_dist + q * nprobe, nprobe * t / nt, nprobe * (t + 1) / nt, heap,
                         buffers);
#pragma omp critical
        merged.merge(heap);
      });
      errors.rethrow();
      finish(q, merged, s, errors, k_scan >= kSplitRerankCandidates);
    }
  }
};

void IvfPqIndex::search_preassigned(idx_t n, const float* x, const float* x_rerank, idx_t k,
                                    const idx_t* probes, const float* probe_dist, int nprobe,
                                    const IvfPqSearchParams& params, float* distances,
                                    idx_t* labels) const {
  PreassignedSearch search{*this, n, x, x_rerank, k, probes, probe_dist, nprobe, params,
                           distances, labels};
  const int threads = omp_get_max_threads();
  // About four query blocks per thread. Blocks pay where the probed lists are long (a 1M synthetic
  // set: thousands of vectors per probe), not on short ones (57k text embeddings: ~70 per probe,
  // 10% slower than query by query there).
  const idx_t block = std::clamp<idx_t>(n / (4 * threads), 1, kScanQueryBlock);
  if (pq_bits_ == 4 && block >= 2 && search.long_lists())
    search.by_query_blocks(block);
  else if (n >= threads)
    search.by_query();
  else
    search.by_probe();
  RETRO_CHECK_ARG(search.out_of_range < 0,
                  "rerank vectors have %lld rows but the index holds id %lld",
                  static_cast<long long>(params.rerank_rows),
                  static_cast<long long>(search.out_of_range));
}

idx_t IvfPqIndex::rerank_query(const float* xq, const idx_t* candidates, idx_t count,
                               const IvfPqSearchParams& params, TopK& best,
                               std::vector<float>& row) const {
  idx_t out_of_range = -1;
  const simd::Kernels& kern = simd::kernels();
  const size_t row_bytes = static_cast<size_t>(d_in_) * (params.rerank_fp16 ? 2 : 4);
  const char* rows = static_cast<const char*>(params.rerank_vectors);
  // The candidates' rows are scattered over a large (often memory-mapped) array: each is
  // prefetched a few candidates ahead, so several rows are in flight instead of one at a time.
  constexpr idx_t kAhead = 4;
  auto prefetch = [&](idx_t id) {
    if (id < 0) return;
    for (size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(rows + id * row_bytes + b);
  };
  for (idx_t c = 0; c < std::min(kAhead, count); ++c) prefetch(candidates[c]);
  for (idx_t c = 0; c < count; ++c) {
    if (c + kAhead < count) prefetch(candidates[c + kAhead]);
    const idx_t id = candidates[c];
    if (id < 0) continue;
    if (id >= params.rerank_rows) {
      out_of_range = std::max(out_of_range, id);
      continue;
    }
    const float* v;
    if (params.rerank_fp16) {
      const uint16_t* h = reinterpret_cast<const uint16_t*>(rows + id * row_bytes);
      kern.widen_halves(d_in_, h, row.data());
      v = row.data();
    } else {
      v = reinterpret_cast<const float*>(rows + id * row_bytes);
    }
    best.push(metric_ == Metric::L2 ? kern.l2_distance(d_in_, xq, v)
                                    : -kern.inner_product(d_in_, xq, v),
              id);
  }
  return out_of_range;
}

void IvfPqIndex::rerank(idx_t n, const float* x, idx_t k, idx_t k_candidates,
                        const idx_t* cand_labels, const IvfPqSearchParams& params,
                        float* distances, idx_t* labels) const {
  for (idx_t i = 0; i < n * k_candidates; ++i)
    RETRO_CHECK_ARG(cand_labels[i] < params.rerank_rows,
                    "rerank vectors have %lld rows but the index holds id %lld",
                    static_cast<long long>(params.rerank_rows),
                    static_cast<long long>(cand_labels[i]));
  ParallelErrors errors;
#pragma omp parallel if (n > 1)
  {
    std::vector<float> row;
    std::optional<TopK> best;
#pragma omp for schedule(dynamic)
    for (idx_t q = 0; q < n; ++q)
      errors.run([&] {
        if (!best) {
          row.resize(d_in_);
          best.emplace(k, std::max<idx_t>(k_candidates, 1));
        }
        rerank_query(x + q * d_in_, cand_labels + q * k_candidates, k_candidates, params, *best,
                     row);
        best->write_sorted(distances + q * k, labels + q * k);
      });
  }
  errors.rethrow();
}

}  // namespace retro
