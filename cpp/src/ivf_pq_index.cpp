#include "retro/ivf_pq_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "distances.h"
#include "index_file.h"
#include "ivf_pq_internal.h"
#include "kmeans.h"
#include "new_ids.h"
#include "parallel_errors.h"
#include "retro/error.h"
#include "simd/kernels.h"

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

void IvfPqIndex::check_mapping() const {
  if (mapped_) mapped_->check_intact();
}

void IvfPqIndex::check_new_ids(idx_t n, const idx_t* ids) const {
  retro::check_new_ids(n, ids, ntotal_, [&](auto&& check) {
    for (const List& list : lists_)
      for (idx_t i = 0; i < list.size; ++i) check(list.ids[i]);
  });
}

void IvfPqIndex::check_list(idx_t list) const {
  RETRO_CHECK_ARG(list >= 0 && list < nlist_, "list %lld is out of range: the index has nlist=%lld",
                  static_cast<long long>(list), static_cast<long long>(nlist_));
}

void IvfPqIndex::set_rotation(const float* rotation) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
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
  std::shared_lock<std::shared_mutex> lock(mutex_);
  rotate_unlocked(n, x, out);
}

void IvfPqIndex::rotate_unlocked(idx_t n, const float* x, float* out) const {
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
  rotate_unlocked(n, x, buffer.data());
  return buffer.data();
}

void IvfPqIndex::train(idx_t n, const float* x_in) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
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
  // One sub-quantizer per thread at a time (its k-means runs on that thread: with dsub ~ 8 the
  // k-means steps are too small to share); k-means results do not depend on the thread count.
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic)
  for (int m = 0; m < pq_m_; ++m)
    errors.run([&] {
      KMeansParams pq_params;
      pq_params.niter = train_params.niter;
      pq_params.max_points_per_centroid = 0;  // already subsampled above
      pq_params.seed = seed_ + 1 + m;
      KMeansResult sub = kmeans(n_pq, dsub, residuals.data() + m * dsub, d_, ksub(), pq_params);
      std::memcpy(&pq_centroids_[static_cast<size_t>(m) * ksub() * dsub], sub.centroids.data(),
                  sub.centroids.size() * sizeof(float));
    });
  errors.rethrow();
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
  // Each block of vectors through every sub-quantizer on one thread: pq_m small argmins (dsub
  // ~ 4-8, ksub 16 or 256) per block, not pq_m passes over all n vectors.
  constexpr idx_t kBlock = 256;
#pragma omp parallel for schedule(dynamic)
  for (idx_t i0 = 0; i0 < n; i0 += kBlock) {
    const idx_t rows = std::min(kBlock, n - i0);
    idx_t nearest[kBlock];
    for (int m = 0; m < pq_m_; ++m) {
      nearest_labels(Metric::L2, rows, residuals.data() + i0 * d_ + m * dsub, d_,
                     derived_->pq[m], nearest);
      for (idx_t i = 0; i < rows; ++i)
        codes[(i0 + i) * pq_m_ + m] = static_cast<uint8_t>(nearest[i]);
    }
  }
}

void IvfPqIndex::set_trained(const float* coarse_centroids, const float* pq_centroids) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
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
  std::unique_lock<std::shared_mutex> lock(mutex_);
  check_trained("add_encoded");
  check_writable("add_encoded");
  check_list(list);
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(n == 0 || (codes != nullptr && ids != nullptr),
                  "add_encoded() needs codes and ids");
  for (idx_t i = 0; i < n * pq_m_; ++i)
    RETRO_CHECK_ARG(codes[i] < ksub(), "code %d of vector %lld is out of range for %d-bit codes",
                    codes[i], static_cast<long long>(i / pq_m_), pq_bits_);
  check_new_ids(n, ids);
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
  std::unique_lock<std::shared_mutex> lock(mutex_);
  check_trained("add");
  check_writable("add");
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  check_vectors(n, d_in_, x, "added vectors");
  check_new_ids(n, ids);
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
  ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 64)
  for (idx_t l = 0; l < nlist_; ++l)
    errors.run([&] {
      for (idx_t j = start[l]; j < start[l + 1]; ++j) {
        const idx_t i = order[j];
        append(l, &codes[i * pq_m_], ids != nullptr ? ids[i] : first_id + i);
      }
    });
  errors.rethrow();
}

void IvfPqIndex::add_preassigned(idx_t n, const idx_t* list_of, const uint8_t* codes,
                                 const idx_t* ids) {
  std::unique_lock<std::shared_mutex> lock(mutex_);
  check_trained("add_preassigned");
  check_writable("add_preassigned");
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(n == 0 || (list_of != nullptr && codes != nullptr),
                  "add_preassigned() needs lists and codes");
  for (idx_t i = 0; i < n; ++i) check_list(list_of[i]);
  for (idx_t i = 0; i < n * pq_m_; ++i)
    RETRO_CHECK_ARG(codes[i] < ksub(), "code %d of vector %lld is out of range for %d-bit codes",
                    codes[i], static_cast<long long>(i / pq_m_), pq_bits_);
  check_new_ids(n, ids);
  append_batch(n, list_of, codes, ids, ntotal_);
  ntotal_ += n;
  rebuild_list_views();
}

IvfPqConcatenatedLists IvfPqIndex::concatenated_lists() const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  RETRO_CHECK_ARG(pq_bits_ == 8, "concatenated lists hold 8-bit codes; this index has pq_bits=%d",
                  pq_bits_);
  check_mapping();
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
  std::unique_lock<std::shared_mutex> lock(mutex_);
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
void IvfPqIndex::query_tables(idx_t nq, const float* x, float* luts) const {
  const simd::Kernels& kern = simd::kernels();
  const int dsub = this->dsub(), K = ksub();
  const size_t table_size = static_cast<size_t>(pq_m_) * K;
  const float scale = metric_ == Metric::L2 ? -2.0f : -1.0f;
  for (int m = 0; m < pq_m_; ++m)
    kern.inner_products_t(static_cast<int>(nq), dsub, K, x + m * dsub, static_cast<size_t>(d_),
                          &derived_->pq_t[static_cast<size_t>(m) * dsub * K], scale,
                          luts + static_cast<size_t>(m) * K, table_size);
}

void IvfPqIndex::rerank_candidates(idx_t n, const float* x, idx_t k, idx_t k_candidates,
                                   const idx_t* cand_labels, const IvfPqSearchParams& params,
                                   float* distances, idx_t* labels) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  check_mapping();
  RETRO_CHECK_ARG(n >= 0, "n must be non-negative");
  RETRO_CHECK_ARG(k > 0, "k must be positive, got %lld", static_cast<long long>(k));
  RETRO_CHECK_ARG(k_candidates >= 0, "k_candidates must be non-negative");
  RETRO_CHECK_ARG(params.rerank_vectors != nullptr, "rerank_candidates needs rerank vectors");
  check_vectors(n, d_in_, x, "queries");
  rerank(n, x, k, k_candidates, cand_labels, params, distances, labels);
  to_search_distances(metric_, n * k, distances);
}

void IvfPqIndex::search(idx_t n, const float* x_in, idx_t k, float* distances, idx_t* labels,
                        const IvfPqSearchParams& params) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  check_mapping();
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
  to_search_distances(metric_, n * k, distances);
}

}  // namespace retro
