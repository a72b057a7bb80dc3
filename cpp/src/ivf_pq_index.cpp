#include "retro/ivf_pq_index.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "distances.h"
#include "index_file.h"
#include "ivf_pq_internal.h"
#include "kmeans.h"
#include "quantized_table.h"
#include "retro/error.h"
#include "simd/kernels.h"
#include "top_k.h"

namespace retro {

namespace {
constexpr idx_t kEncodeBatch = 16384;  // vectors encoded at a time (bounds the residual buffer)
}

IvfPqIndex::IvfPqIndex(int d, idx_t nlist, int pq_m, int pq_bits, Metric metric, uint64_t seed,
                       bool by_residual, int opq_m, int opq_d)
    : d_in_(d),
      d_(opq_m > 0 && opq_d > 0 ? opq_d : d),
      nlist_(nlist),
      pq_m_(pq_m),
      pq_bits_(pq_bits),
      metric_(metric),
      seed_(seed),
      by_residual_(by_residual),
      opq_m_(opq_m) {
  RETRO_CHECK_ARG(d > 0, "dimension d must be positive, got %d", d);
  RETRO_CHECK_ARG(nlist > 0, "nlist must be positive, got %lld", static_cast<long long>(nlist));
  RETRO_CHECK_ARG(pq_m > 0, "pq_m must be positive, got %d", pq_m);
  RETRO_CHECK_ARG(opq_m >= 0, "opq_m must be >= 0 (0: no OPQ rotation), got %d", opq_m);
  RETRO_CHECK_ARG(opq_d >= 0 && opq_d <= d,
                  "the OPQ output dimension opq_d=%d must be in [1, d=%d] (0: d)", opq_d, d);
  RETRO_CHECK_ARG(opq_m > 0 || opq_d == 0, "opq_d=%d needs an OPQ rotation (opq_m > 0)", opq_d);
  if (opq_m > 0) {
    RETRO_CHECK_ARG(d_ % opq_m == 0, "the OPQ output dimension %d is not divisible by opq_m=%d",
                    d_, opq_m);
    RETRO_CHECK_ARG(d_ % pq_m == 0, "the OPQ output dimension %d is not divisible by pq_m=%d", d_,
                    pq_m);
  } else {
    RETRO_CHECK_ARG(d % pq_m == 0, "d=%d is not divisible by pq_m=%d", d, pq_m);
  }
  RETRO_CHECK_ARG(pq_bits == 8 || pq_bits == 4,
                  "pq_bits must be 8 (PQ) or 4 (fast-scan PQ), got %d", pq_bits);
  RETRO_CHECK_ARG(metric == Metric::L2 || metric == Metric::InnerProduct, "unknown metric %u",
                  static_cast<unsigned>(metric));
  RETRO_CHECK_ARG(by_residual || pq_bits == 4,
                  "by_residual=false (PQ of the vectors themselves) needs pq_bits=4, got %d",
                  pq_bits);
  lists_.resize(nlist);
  owned_.resize(nlist);
}

IvfPqIndex::~IvfPqIndex() = default;

void IvfPqIndex::check_trained(const char* what) const {
  RETRO_CHECK(is_trained_, "index is not trained: call train() before %s()", what);
}

void IvfPqIndex::check_writable(const char* what) const {
  RETRO_CHECK(!is_mmapped(),
              "this index was loaded with mmap=True and is read-only: load it with mmap=False to "
              "call %s()", what);
}

void IvfPqIndex::check_list(idx_t list) const {
  RETRO_CHECK_ARG(list >= 0 && list < nlist_, "list %lld is out of range: the index has nlist=%lld",
                  static_cast<long long>(list), static_cast<long long>(nlist_));
}

void IvfPqIndex::set_rotation(const float* rotation) {
  RETRO_CHECK_ARG(has_rotation(), "set_rotation() needs an index with OPQ (opq_m > 0)");
  RETRO_CHECK(ntotal_ == 0, "set_rotation() needs an empty index: this one holds %lld vectors "
              "encoded in the current rotation's space (call reset() first)",
              static_cast<long long>(ntotal_));
  check_vectors(d_, d_in_, rotation, "OPQ rotation");
  // Orthonormal rows keep distances (L2 up to the dropped dimensions, inner products likewise):
  // the index's distances are those of the rotated vectors.
  for (int i = 0; i < d_; ++i)
    for (int j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (int t = 0; t < d_in_; ++t)
        dot += double(rotation[i * d_in_ + t]) * double(rotation[j * d_in_ + t]);
      RETRO_CHECK_ARG(std::abs(dot - (i == j ? 1.0 : 0.0)) <= 1e-3,
                      "the OPQ rotation's rows must be orthonormal: rows %d and %d have inner "
                      "product %g", i, j, dot);
    }
  rotation_.assign(rotation, rotation + static_cast<size_t>(d_) * d_in_);
  rotation_packed_ = std::make_unique<PackedVectors>(d_, d_in_, rotation_.data(), d_in_);
  is_trained_ = false;  // the quantizers belong to the old rotation's space
  coarse_centroids_.clear();
  pq_centroids_.clear();
  derived_.reset();
}

void IvfPqIndex::rotate(idx_t n, const float* x, float* out) const {
  if (!has_rotation()) {
    std::copy(x, x + n * d_in_, out);
    return;
  }
  RETRO_CHECK(rotation_is_set(), "the OPQ rotation is not trained: call set_rotation() first "
              "(retro.IvfPqIndex.train trains it)");
  const simd::Kernels& kern = simd::kernels();
  constexpr idx_t kRows = 256;
#pragma omp parallel for schedule(static) if (worth_threads(double(n) * d_ * d_in_))
  for (idx_t i0 = 0; i0 < n; i0 += kRows)
    kern.gemm_packed(std::min(kRows, n - i0), d_, d_in_, x + i0 * d_in_, d_in_,
                     rotation_packed_->panels(), out + i0 * d_, d_);
}

const float* IvfPqIndex::rotated(idx_t n, const float* x, std::vector<float>& buffer) const {
  if (!has_rotation()) return x;
  buffer.resize(static_cast<size_t>(n) * d_);
  rotate(n, x, buffer.data());
  return buffer.data();
}

void IvfPqIndex::train(idx_t n, const float* x_in) {
  RETRO_CHECK_ARG(n >= nlist_, "training needs at least nlist=%lld points, got %lld",
                  static_cast<long long>(nlist_), static_cast<long long>(n));
  RETRO_CHECK_ARG(n >= ksub(), "training needs at least 2^pq_bits=%d points, got %lld", ksub(),
                  static_cast<long long>(n));
  check_vectors(n, d_in_, x_in, "training data");
  std::vector<float> rotated_buffer;
  const float* x = rotated(n, x_in, rotated_buffer);

  KMeansParams coarse_params;
  coarse_params.niter = train_params.niter;
  coarse_params.max_points_per_centroid = train_params.max_points_per_centroid;
  coarse_params.seed = seed_;
  coarse_params.metric = metric_;
  KMeansResult coarse = kmeans(n, d_, x, d_, nlist_, coarse_params);
  coarse_centroids_ = std::move(coarse.centroids);
  coarse_objective_ = coarse.objective.back();

  // Residuals of (a subsample of) the training points to their nearest coarse centroid, or the
  // points themselves.
  const idx_t max_pq_points = static_cast<idx_t>(ksub()) * train_params.max_points_per_centroid;
  const idx_t n_pq = train_params.max_points_per_centroid > 0 ? std::min(n, max_pq_points) : n;
  const idx_t stride = n / n_pq;  // evenly spaced rows, deterministic
  std::vector<float> residuals(static_cast<size_t>(n_pq) * d_);
  for (idx_t i = 0; i < n_pq; ++i)
    std::memcpy(&residuals[i * d_], x + i * stride * d_, d_ * sizeof(float));
  if (by_residual_) {
    PackedVectors packed(nlist_, d_, coarse_centroids_.data(), d_);
    std::vector<float> dist(n_pq);
    std::vector<idx_t> assign(n_pq);
    knn(metric_, n_pq, residuals.data(), d_, packed, 1, dist.data(), assign.data());
    for (idx_t i = 0; i < n_pq; ++i)
      for (int j = 0; j < d_; ++j) residuals[i * d_ + j] -= coarse_centroids_[assign[i] * d_ + j];
  }

  const int dsub = this->dsub();
  pq_centroids_.assign(static_cast<size_t>(pq_m_) * ksub() * dsub, 0.0f);
  for (int m = 0; m < pq_m_; ++m) {
    KMeansParams pq_params;
    pq_params.niter = train_params.niter;
    pq_params.max_points_per_centroid = 0;  // already subsampled above
    pq_params.seed = seed_ + 1 + m;
    KMeansResult sub = kmeans(n_pq, dsub, residuals.data() + m * dsub, d_, ksub(), pq_params);
    std::memcpy(&pq_centroids_[static_cast<size_t>(m) * ksub() * dsub], sub.centroids.data(),
                sub.centroids.size() * sizeof(float));
  }
  is_trained_ = true;
  rebuild_derived();
}

void IvfPqIndex::rebuild_derived() {
  auto derived = std::make_unique<Derived>();
  const int dsub = this->dsub(), K = ksub();
  derived->coarse = PackedVectors(nlist_, d_, coarse_centroids_.data(), d_);
  derived->pq_t.resize(static_cast<size_t>(pq_m_) * dsub * K);
  for (int m = 0; m < pq_m_; ++m) {
    const float* c = &pq_centroids_[static_cast<size_t>(m) * K * dsub];
    derived->pq.emplace_back(K, dsub, c, dsub);
    for (int j = 0; j < K; ++j)
      for (int t = 0; t < dsub; ++t) derived->pq_t[(static_cast<size_t>(m) * dsub + t) * K + j] = c[j * dsub + t];
  }
  if (pq_bits_ == 4 && metric_ == Metric::L2) {
    derived->pq_norms.assign(static_cast<size_t>(pq_m_) * K, 0.0f);
    for (size_t i = 0; i < derived->pq_norms.size(); ++i)
      for (int t = 0; t < dsub; ++t)
        derived->pq_norms[i] += pq_centroids_[i * dsub + t] * pq_centroids_[i * dsub + t];
  }
  derived_ = std::move(derived);
}

void IvfPqIndex::encode(idx_t n, const float* x, idx_t* list_of, uint8_t* codes) const {
  const int dsub = this->dsub();
  std::vector<float> dist(n), residuals(static_cast<size_t>(n) * d_);
  knn(metric_, n, x, d_, derived_->coarse, 1, dist.data(), list_of);
#pragma omp parallel for schedule(static)
  for (idx_t i = 0; i < n; ++i)
    for (int j = 0; j < d_; ++j)
      residuals[i * d_ + j] = x[i * d_ + j] - (by_residual_ ? coarse_centroids_[list_of[i] * d_ + j] : 0.0f);
  std::vector<idx_t> nearest(n);
  for (int m = 0; m < pq_m_; ++m) {
    knn(Metric::L2, n, residuals.data() + m * dsub, d_, derived_->pq[m], 1, dist.data(),
        nearest.data());
    for (idx_t i = 0; i < n; ++i) codes[i * pq_m_ + m] = static_cast<uint8_t>(nearest[i]);
  }
}

void IvfPqIndex::set_trained(const float* coarse_centroids, const float* pq_centroids) {
  RETRO_CHECK(ntotal_ == 0, "set_trained() needs an empty index: this one holds %lld vectors "
              "encoded with the current quantizers (call reset() first)",
              static_cast<long long>(ntotal_));
  RETRO_CHECK(!has_rotation() || rotation_is_set(), "set_trained() on an index with OPQ needs its "
              "rotation: call set_rotation() first");
  check_vectors(nlist_, d_, coarse_centroids, "coarse centroids");
  check_vectors(static_cast<idx_t>(pq_m_) * ksub(), dsub(), pq_centroids, "PQ centroids");
  coarse_centroids_.assign(coarse_centroids, coarse_centroids + static_cast<size_t>(nlist_) * d_);
  pq_centroids_.assign(pq_centroids, pq_centroids + static_cast<size_t>(pq_m_) * ksub() * dsub());
  coarse_objective_ = 0.0;
  is_trained_ = true;
  rebuild_derived();
}

void IvfPqIndex::append(idx_t list, const uint8_t* code, idx_t id) {
  OwnedList& owned = owned_[list];
  const idx_t size = static_cast<idx_t>(owned.ids.size());
  const CodeLayout layout = layout_of(*this);
  const bool new_block = size % layout.block() == 0;
  if (new_block) owned.codes.resize(layout.bytes(size + 1), 0);
  layout.put(owned.codes.data(), size, code);
  owned.ids.push_back(id);
  if (has_terms()) {
    if (new_block) owned.terms.resize(layout.padded(size + 1), 0.0f);
    owned.terms[size] = reconstruction_term(list, code);
  }
}

void IvfPqIndex::add_encoded(idx_t list, idx_t n, const uint8_t* codes, const idx_t* ids) {
  check_trained("add_encoded");
  check_writable("add_encoded");
  check_list(list);
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(n == 0 || (codes != nullptr && ids != nullptr),
                  "add_encoded() needs codes and ids");
  for (idx_t i = 0; i < n * pq_m_; ++i)
    RETRO_CHECK_ARG(codes[i] < ksub(), "code %d of vector %lld is out of range for %d-bit codes",
                    codes[i], static_cast<long long>(i / pq_m_), pq_bits_);
  for (idx_t i = 0; i < n; ++i) append(list, codes + i * pq_m_, ids[i]);
  ntotal_ += n;
  rebuild_list_views();
}

void IvfPqIndex::list_codes(idx_t list, uint8_t* codes) const {
  check_list(list);
  const List& l = lists_[list];
  const CodeLayout layout = layout_of(*this);
  for (idx_t i = 0; i < l.size; ++i) layout.get(l.codes, i, codes + i * pq_m_);
}

idx_t IvfPqIndex::list_size(idx_t list) const {
  check_list(list);
  return lists_[list].size;
}

const idx_t* IvfPqIndex::list_ids(idx_t list) const {
  check_list(list);
  return lists_[list].ids;
}

void IvfPqIndex::add(idx_t n, const float* x, const idx_t* ids) {
  check_trained("add");
  check_writable("add");
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  check_vectors(n, d_in_, x, "added vectors");
  std::vector<idx_t> list_of(kEncodeBatch);
  std::vector<uint8_t> codes(static_cast<size_t>(kEncodeBatch) * pq_m_);
  std::vector<float> rotated_buffer;
  for (idx_t i0 = 0; i0 < n; i0 += kEncodeBatch) {
    const idx_t nb = std::min(kEncodeBatch, n - i0);
    encode(nb, rotated(nb, x + i0 * d_in_, rotated_buffer), list_of.data(), codes.data());
    append_batch(nb, list_of.data(), codes.data(), ids != nullptr ? ids + i0 : nullptr, ntotal_ + i0);
  }
  ntotal_ += n;
  rebuild_list_views();
}

void IvfPqIndex::append_batch(idx_t n, const idx_t* list_of, const uint8_t* codes,
                              const idx_t* ids, idx_t first_id) {
  // The vectors grouped by list, in input order (a counting sort); each list is then appended by
  // one thread: the layout is deterministic.
  std::vector<idx_t> start(nlist_ + 1, 0), order(n);
  for (idx_t i = 0; i < n; ++i) ++start[list_of[i] + 1];
  for (idx_t l = 0; l < nlist_; ++l) start[l + 1] += start[l];
  std::vector<idx_t> next(start.begin(), start.end() - 1);
  for (idx_t i = 0; i < n; ++i) order[next[list_of[i]]++] = i;
#pragma omp parallel for schedule(dynamic, 64)
  for (idx_t l = 0; l < nlist_; ++l)
    for (idx_t j = start[l]; j < start[l + 1]; ++j) {
      const idx_t i = order[j];
      append(l, &codes[i * pq_m_], ids != nullptr ? ids[i] : first_id + i);
    }
}

void IvfPqIndex::add_preassigned(idx_t n, const idx_t* list_of, const uint8_t* codes,
                                 const idx_t* ids) {
  check_trained("add_preassigned");
  check_writable("add_preassigned");
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(n == 0 || (list_of != nullptr && codes != nullptr),
                  "add_preassigned() needs lists and codes");
  for (idx_t i = 0; i < n; ++i) check_list(list_of[i]);
  for (idx_t i = 0; i < n * pq_m_; ++i)
    RETRO_CHECK_ARG(codes[i] < ksub(), "code %d of vector %lld is out of range for %d-bit codes",
                    codes[i], static_cast<long long>(i / pq_m_), pq_bits_);
  append_batch(n, list_of, codes, ids, ntotal_);
  ntotal_ += n;
  rebuild_list_views();
}

IvfPqConcatenatedLists IvfPqIndex::concatenated_lists() const {
  RETRO_CHECK_ARG(pq_bits_ == 8, "concatenated lists hold 8-bit codes; this index has pq_bits=%d",
                  pq_bits_);
  const CodeLayout layout = layout_of(*this);
  IvfPqConcatenatedLists out;
  out.offsets.assign(nlist_ + 1, 0);
  out.sizes.resize(nlist_);
  for (idx_t l = 0; l < nlist_; ++l) {
    out.sizes[l] = lists_[l].size;
    out.offsets[l + 1] = out.offsets[l] + layout.padded(lists_[l].size);
  }
  const idx_t total = out.offsets[nlist_];
  out.codes.assign(static_cast<size_t>(total) * pq_m_, 0);
  out.ids.assign(total, -1);
  if (has_terms()) out.terms.assign(total, 0.0f);
#pragma omp parallel for schedule(dynamic, 64)
  for (idx_t l = 0; l < nlist_; ++l) {
    const List& list = lists_[l];
    if (list.size == 0) continue;
    std::memcpy(&out.codes[out.offsets[l] * pq_m_], list.codes, layout.bytes(list.size));
    std::copy(list.ids, list.ids + list.size, &out.ids[out.offsets[l]]);
    if (has_terms()) std::copy(list.terms, list.terms + list.size, &out.terms[out.offsets[l]]);
  }
  return out;
}

void IvfPqIndex::rebuild_list_views() {
  for (idx_t l = 0; l < nlist_; ++l) {
    lists_[l].codes = owned_[l].codes.data();
    lists_[l].ids = owned_[l].ids.data();
    lists_[l].terms = owned_[l].terms.empty() ? nullptr : owned_[l].terms.data();
    lists_[l].size = static_cast<idx_t>(owned_[l].ids.size());
  }
}

void IvfPqIndex::reset() {
  mapped_.reset();
  owned_.assign(nlist_, OwnedList{});
  ntotal_ = 0;
  rebuild_list_views();
}

// ||r||^2 + 2<c, r> for the residual r that `code` reconstructs in `list`.
float IvfPqIndex::reconstruction_term(idx_t list, const uint8_t* code) const {
  const int dsub = this->dsub();
  const float* c = &coarse_centroids_[list * d_];
  float term = 0.0f;
  for (int m = 0; m < pq_m_; ++m) {
    const float* r = &pq_centroids_[(static_cast<size_t>(m) * ksub() + code[m]) * dsub];
    for (int t = 0; t < dsub; ++t) term += r[t] * (r[t] + 2.0f * c[m * dsub + t]);
  }
  return term;
}

// lut (pq_m, ksub) = -2<x_m, r_mj> (L2) or -<x_m, r_mj> (inner product): the per-query part of
// every distance, shared by all lists the query visits.
void IvfPqIndex::query_table(const float* x, float* lut) const {
  const simd::Kernels& kern = simd::kernels();
  const int dsub = this->dsub(), K = ksub();
  const float scale = metric_ == Metric::L2 ? -2.0f : -1.0f;
  for (int m = 0; m < pq_m_; ++m)
    kern.inner_products_t(dsub, K, x + m * dsub, &derived_->pq_t[static_cast<size_t>(m) * dsub * K],
                          scale, lut + static_cast<size_t>(m) * K);
}

namespace {

constexpr idx_t kFilterChunk = 8 * IvfPqIndex::kBlock;  // vectors per filter call (limit refresh)
// From this many candidates a lone query's re-ranking is shared between threads (~400 KB of
// float32 rows at d = 384: far more than waking the threads costs).
constexpr idx_t kSplitRerankCandidates = 256;
// Below this many vectors per query, quantizing the table costs more than the filter saves.
constexpr idx_t kFilterMinVectors = 16 * IvfPqIndex::kBlock;

// The float distance of vector i of a list, summed in the order of simd pq_scan8.
float scan_one(int pq_m, const uint8_t* codes, const float* terms, const float* lut, float bias,
               idx_t i) {
  const uint8_t* block = codes + (i / IvfPqIndex::kBlock) * pq_m * IvfPqIndex::kBlock;
  const idx_t lane = i % IvfPqIndex::kBlock;
  float acc = terms != nullptr ? bias + terms[i] : bias;
  for (int m = 0; m < pq_m; ++m) acc += lut[m * 256 + block[m * IvfPqIndex::kBlock + lane]];
  return acc;
}

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

void IvfPqIndex::search_preassigned(idx_t n, const float* x, const float* x_rerank, idx_t k,
                                    const idx_t* probes, const float* probe_dist, int nprobe,
                                    const IvfPqSearchParams& params, float* distances,
                                    idx_t* labels) const {
  // With re-ranking, each query's k * k_factor scanned candidates are re-scored by the thread that
  // found them, while their ids are in cache: no (n, k * k_factor) arrays in between.
  const bool reranking = params.rerank_vectors != nullptr;
  const idx_t k_scan = reranking ? k * params.k_factor : k;
  // The largest candidate id without a re-ranking row (-1: none); checked after the threads join.
  idx_t out_of_range = -1;
  // split: the candidates are shared out between threads (a query on its own: reading hundreds of
  // scattered rows is the larger part of its time).
  auto finish = [&](idx_t q, TopK& scanned, std::vector<idx_t>& candidates, TopK& best,
                    std::vector<float>& row, bool split = false) {
    if (!reranking) return scanned.write_sorted(distances + q * k, labels + q * k);
    scanned.write_unordered(candidates.data());
    idx_t bad = -1;
    if (split) {
#pragma omp parallel
      {
        TopK local(k);
        std::vector<float> local_row(d_in_);
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        const idx_t c0 = k_scan * t / nt, c1 = k_scan * (t + 1) / nt;
        const idx_t local_bad = rerank_query(x_rerank + q * d_in_, candidates.data() + c0,
                                             c1 - c0, params, local, local_row);
#pragma omp critical
        {
          best.merge(local);
          bad = std::max(bad, local_bad);
        }
      }
    } else {
      bad = rerank_query(x_rerank + q * d_in_, candidates.data(), k_scan, params, best, row);
    }
    best.write_sorted(distances + q * k, labels + q * k);
    if (bad >= 0) {
#pragma omp critical
      out_of_range = std::max(out_of_range, bad);
    }
  };
  auto check_rows = [&] {
    RETRO_CHECK_ARG(out_of_range < 0, "rerank vectors have %lld rows but the index holds id %lld",
                    static_cast<long long>(params.rerank_rows),
                    static_cast<long long>(out_of_range));
  };
  const bool filtering = pq_bits_ == 8 && simd::kernels().pq_filter8 != nullptr &&
                         pq_m_ <= QuantizedTable::kMaxPqM;
  idx_t max_list = 0;
  for (const List& list : lists_) max_list = std::max(max_list, list.size);
  const size_t table_size = static_cast<size_t>(pq_m_) * ksub();
  auto make_buffers = [&] {
    ScanBuffers buffers;
    if (pq_bits_ == 4) {
      buffers.survivors.resize(kFastScanChunk);
      buffers.sums.resize(kFastScanChunk);
      buffers.query_lut.resize(table_size);
      buffers.list_lut.resize(table_size);
      buffers.table4 = std::make_unique<QuantizedTable>(pq_m_, ksub());
      buffers.sums.resize(simd::kMaxScanQueries * kFastScanChunk);
      buffers.survivors.resize(simd::kMaxScanQueries * kFastScanChunk);
      return buffers;
    }
    if (filtering) buffers.survivors.resize(kFilterChunk);
    buffers.list_dist.resize((max_list + kBlock - 1) / kBlock * kBlock);
    return buffers;
  };
  auto vectors_in = [&](const idx_t* query_probes) {  // vectors in a query's probed lists
    idx_t total = 0;
    for (int p = 0; p < nprobe; ++p)
      if (query_probes[p] >= 0) total += lists_[query_probes[p]].size;
    return total;
  };
  const int threads = omp_get_max_threads();
  // 4-bit: blocks of queries, each scanned list by list for all its queries that probe the list;
  // about four blocks per thread, so that dynamic scheduling can even out their costs. It pays
  // where the probed lists are long (a 1M synthetic set: thousands of vectors per probe), not on
  // short ones (57k text embeddings: ~70 per probe, 10% slower than query by query there).
  const idx_t block = std::clamp<idx_t>(n / (4 * threads), 1, kScanQueryBlock);
  auto long_lists = [&] {
    double probed = 0.0;
    for (idx_t q = 0; q < n; ++q) probed += static_cast<double>(vectors_in(probes + q * nprobe));
    return probed >= static_cast<double>(n) * nprobe * kFastScanChunk;
  };
  if (pq_bits_ == 4 && block >= 2 && long_lists()) {
#pragma omp parallel
    {
      ScanBuffers buffers = make_buffers();
      std::vector<TopK> heaps(block, TopK(k_scan));
      TopK best(k);
      std::vector<idx_t> candidates(reranking ? k_scan : 0);
      std::vector<float> row(reranking ? d_in_ : 0);
#pragma omp for schedule(dynamic)
      for (idx_t q0 = 0; q0 < n; q0 += block) {
        const idx_t q1 = std::min(n, q0 + block);
        fast_scan_queries(x, q0, q1, probes, probe_dist, nprobe, heaps.data(), buffers);
        for (idx_t q = q0; q < q1; ++q) finish(q, heaps[q - q0], candidates, best, row);
      }
    }
    return check_rows();
  }
  if (n >= threads) {
#pragma omp parallel
    {
      std::vector<float> lut(table_size);
      QuantizedTable qtable(pq_m_);
      ScanBuffers buffers = make_buffers();
      TopK heap(k_scan), best(k);
      std::vector<idx_t> candidates(reranking ? k_scan : 0);
      std::vector<float> row(reranking ? d_in_ : 0);
#pragma omp for schedule(dynamic)
      for (idx_t q = 0; q < n; ++q) {
        query_table(x + q * d_, lut.data());
        const bool filter = filtering && vectors_in(probes + q * nprobe) >= kFilterMinVectors;
        if (filter) qtable.build(lut.data());
        scan_lists(lut.data(), filter ? &qtable : nullptr, probes + q * nprobe,
                   probe_dist + q * nprobe, 0, nprobe, heap, buffers);
        finish(q, heap, candidates, best, row);
      }
    }
    return check_rows();
  }
  // Few queries: the probes of each query are split between threads, then merged; small scans
  // stay on the calling thread.
  std::vector<float> lut(table_size);
  QuantizedTable qtable(pq_m_);
  TopK merged(k_scan), best(k);
  std::vector<idx_t> candidates(reranking ? k_scan : 0);
  std::vector<float> row(reranking ? d_in_ : 0);
  for (idx_t q = 0; q < n; ++q) {
    query_table(x + q * d_, lut.data());
    const idx_t vectors = vectors_in(probes + q * nprobe);
    const bool filter = filtering && vectors >= kFilterMinVectors;
    if (filter) qtable.build(lut.data());
#pragma omp parallel if (worth_threads(double(vectors) * pq_m_))
    {
      ScanBuffers buffers = make_buffers();
      TopK heap(k_scan);
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      scan_lists(lut.data(), filter ? &qtable : nullptr, probes + q * nprobe,
                 probe_dist + q * nprobe, nprobe * t / nt, nprobe * (t + 1) / nt, heap, buffers);
#pragma omp critical
      merged.merge(heap);
    }
    finish(q, merged, candidates, best, row, k_scan >= kSplitRerankCandidates);
  }
  check_rows();
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
#pragma omp parallel if (n > 1)
  {
    std::vector<float> row(d_in_);
    TopK best(k);
#pragma omp for schedule(dynamic)
    for (idx_t q = 0; q < n; ++q) {
      rerank_query(x + q * d_in_, cand_labels + q * k_candidates, k_candidates, params, best, row);
      best.write_sorted(distances + q * k, labels + q * k);
    }
  }
}

void IvfPqIndex::rerank_candidates(idx_t n, const float* x, idx_t k, idx_t k_candidates,
                                   const idx_t* cand_labels, const IvfPqSearchParams& params,
                                   float* distances, idx_t* labels) const {
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(k > 0, "k must be positive, got %lld", static_cast<long long>(k));
  RETRO_CHECK_ARG(k_candidates >= 0, "k_candidates must be non-negative");
  RETRO_CHECK_ARG(params.rerank_vectors != nullptr, "rerank_candidates needs rerank vectors");
  check_vectors(n, d_in_, x, "queries");
  rerank(n, x, k, k_candidates, cand_labels, params, distances, labels);
  if (metric_ == Metric::InnerProduct)
    for (idx_t i = 0; i < n * k; ++i) distances[i] = -distances[i];
}

void IvfPqIndex::search(idx_t n, const float* x_in, idx_t k, float* distances, idx_t* labels,
                        const IvfPqSearchParams& params) const {
  check_trained("search");
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(k > 0, "k must be positive, got %lld", static_cast<long long>(k));
  RETRO_CHECK_ARG(params.nprobe > 0, "nprobe must be positive, got %d", params.nprobe);
  check_vectors(n, d_in_, x_in, "queries");
  const bool reranking = params.rerank_vectors != nullptr;
  if (reranking) RETRO_CHECK_ARG(params.k_factor >= 1, "k_factor must be >= 1, got %d", params.k_factor);
  if (n == 0) return;
  std::vector<float> rotated_buffer;
  const float* x = rotated(n, x_in, rotated_buffer);  // the PQ search's queries; re-ranking's: x_in
  const int nprobe = static_cast<int>(std::min<idx_t>(params.nprobe, nlist_));
  std::vector<float> probe_dist(static_cast<size_t>(n) * nprobe);
  std::vector<idx_t> probes(static_cast<size_t>(n) * nprobe);
  knn(metric_, n, x, d_, derived_->coarse, nprobe, probe_dist.data(), probes.data());
  if (!by_residual_) {
    // The scans start from the bias of each probe: without residuals, the query's own part of
    // the distance (||x||^2 for L2, 0 for inner product) instead of its distance to the centroid.
    const simd::Kernels& kern = simd::kernels();
    for (idx_t q = 0; q < n; ++q) {
      const float bias = metric_ == Metric::L2 ? kern.inner_product(d_, x + q * d_, x + q * d_) : 0.0f;
      std::fill(probe_dist.begin() + q * nprobe, probe_dist.begin() + (q + 1) * nprobe, bias);
    }
  }
  search_preassigned(n, x, x_in, k, probes.data(), probe_dist.data(), nprobe, params, distances,
                     labels);
  if (metric_ == Metric::InnerProduct)
    for (idx_t i = 0; i < n * k; ++i) distances[i] = -distances[i];
}

}  // namespace retro
