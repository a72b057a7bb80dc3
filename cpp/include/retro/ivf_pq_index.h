// IVF-PQ: a coarse k-means quantizer (nlist lists) and a product quantizer (pq_m sub-quantizers of
// 2^pq_bits centroids) on the residuals, searched with the L2 decomposition of faiss's IVFADC:
//   ||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2<c, r>) - 2<q, r>
// The first term comes from the coarse search, the last from one look-up table per query (shared
// by all its lists, so it stays in L1/L2), and the middle one is precomputed per stored vector
// (4 bytes each) rather than per list and code as faiss does: no (nlist, pq_m, 256) table to build
// or read per probe, and no table that outgrows memory at millions of lists.
//
// 8-bit codes (pq_bits = 8) of each list are stored in blocks of kBlock vectors,
// sub-quantizer-major inside a block:
//   codes[(block * pq_m + m) * kBlock + lane]
// so a SIMD scan loads the m-th code of kBlock vectors with one 64-byte load. Where the CPU has
// AVX-512 VBMI the scan first filters with an 8-bit copy of the table, looked up in registers,
// and re-scores only the vectors that may enter the top-k (the results are the same).
//
// 4-bit codes (pq_bits = 4, faiss's "PQ<m>x4fs" fast-scan) come in blocks of kFastScanBlock = 32
// vectors, two sub-quantizers per 32 bytes (cpp/src/code_layout.h), scanned with byte shuffles
// against a table quantized to 8 bits per (query, list): ceil(pq_m / 2) bytes per vector and no
// stored term; for L2 the terms ||r||^2 + 2<c, r> go into the list's table instead, computed from
// the list's centroid at each probe. Its distances are those of the quantized table: approximate,
// meant to be followed by exact re-ranking (IvfPqSearchParams::rerank_vectors).
//
// by_residual = false (4-bit only; faiss's default for "PQ<m>x4fs") quantizes the vectors
// themselves instead of their residuals: the lists only select what is scanned, one table per
// query serves every list (no per-list terms, no per-list quantization), and the distance is
// ||x||^2 + sum_m (||r_mj||^2 - 2<x_m, r_mj>) (L2) or -sum_m <x_m, r_mj> (inner product).
//
// With OPQ (opq_m > 0, faiss's "OPQ<opq_m>_<opq_d>,IVF..,PQ..") every vector x (d) is first
// rotated to R x (opq_d <= d dimensions; R (opq_d, d) has orthonormal rows), and the coarse
// quantizer and the PQ above see only rotated vectors, as behind faiss's IndexPreTransform. R is
// trained outside the core (python/retro/opq.py: it needs an SVD) and given with set_rotation();
// train, add and search rotate their inputs here, so every entry point applies it. Re-ranking
// compares the original query with the original vectors.
//
// Threads: any number may search (and read) one index while one adds (or trains, resets): a
// reader-writer lock inside orders them, so a search sees the index before or after an add, never
// during one. Methods that return pointers into the lists (list_ids) and list_size/list_codes take
// no lock: hold read_lock() across them where another thread may add.
#pragma once
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "retro/types.h"

namespace retro {

struct IvfPqSearchParams {
  int nprobe = 8;  // lists visited per query; values above nlist are clamped to nlist
  // Exact re-ranking: search k * k_factor PQ candidates and re-score them against rerank_vectors.
  const void* rerank_vectors = nullptr;  // (rerank_rows, d) float32 or float16, row = vector id
  bool rerank_fp16 = false;
  idx_t rerank_rows = 0;
  int k_factor = 4;
};

struct IvfPqTrainParams {
  int niter = 25;                     // k-means iterations (coarse and PQ), as faiss
  int max_points_per_centroid = 256;  // training points beyond this are subsampled, as faiss
};

// Every list's blocked 8-bit codes, ids and terms laid end to end: the layout a GPU copy of the
// index (retro/ivf_pq_cuda.h) searches. List l holds vectors [offsets[l], offsets[l] + sizes[l])
// of a span padded to whole blocks of IvfPqIndex::kBlock vectors.
struct IvfPqConcatenatedLists {
  std::vector<idx_t> offsets;  // (nlist + 1,) in vectors, multiples of kBlock
  std::vector<idx_t> sizes;    // (nlist,)
  std::vector<uint8_t> codes;  // (offsets[nlist] * pq_m,): list l's blocks start at byte offsets[l] * pq_m
  std::vector<idx_t> ids;      // (offsets[nlist],), -1 on padding
  std::vector<float> terms;    // (offsets[nlist],) ||r||^2 + 2<c, r> (L2; 0 on padding), empty for IP
};

class MappedFile;
class PackedVectors;
class QuantizedTable;
class TopK;

class IvfPqIndex {
 public:
  static constexpr int kBlock = 64;          // vectors per block of 8-bit codes
  static constexpr int kFastScanBlock = 32;  // vectors per block of 4-bit codes

  // opq_m > 0 adds an OPQ rotation to opq_d dimensions (0: d), trained with opq_m sub-quantizers;
  // pq_m must divide ivf_d() (opq_d, or d without OPQ).
  IvfPqIndex(int d, idx_t nlist, int pq_m, int pq_bits = 8, Metric metric = Metric::L2,
             uint64_t seed = 0, bool by_residual = true, int opq_m = 0, int opq_d = 0);
  ~IvfPqIndex();

  // x: (n, d). Trains the coarse centroids then the PQ on residuals (of the rotated vectors, with
  // OPQ: set_rotation() first).
  void train(idx_t n, const float* x);
  // rotation: (ivf_d, d) with orthonormal rows (|R R^T - I| <= 1e-3 elementwise). Only on an index
  // with OPQ and no vectors; the quantizers of the old rotation's space are dropped (untrained).
  void set_rotation(const float* rotation);
  // x: (n, d) -> out: (n, ivf_d) the rotated vectors R x (a copy of x without OPQ).
  void rotate(idx_t n, const float* x, float* out) const;
  // x: (n, d); ids: (n,) or nullptr for sequential ids ntotal .. ntotal + n - 1. Ids must be >= 0
  // and distinct from each other and from those stored (checked: one pass over the stored ids).
  void add(idx_t n, const float* x, const idx_t* ids = nullptr);
  // Appends n vectors encoded elsewhere (e.g. on a GPU): list_of (n,) their lists, codes (n, pq_m)
  // against those lists' centroids, ids (n,) or nullptr for sequential ids; input order is kept
  // inside each list, as add() keeps it.
  void add_preassigned(idx_t n, const idx_t* list_of, const uint8_t* codes,
                       const idx_t* ids = nullptr);
  // x: (n, d) -> distances, labels: (n, k), best first; -1 and +inf (L2) / -inf (IP) where fewer
  // than k results exist.
  void search(idx_t n, const float* x, idx_t k, float* distances, idx_t* labels,
              const IvfPqSearchParams& params = {}) const;
  // The second half of a re-ranked search, for candidates gathered elsewhere (e.g. merged from
  // shards): cand_labels (n, k_candidates), -1 skipped, re-scored exactly against
  // params.rerank_vectors -> distances, labels (n, k) as search returns them.
  void rerank_candidates(idx_t n, const float* x, idx_t k, idx_t k_candidates,
                         const idx_t* cand_labels, const IvfPqSearchParams& params,
                         float* distances, idx_t* labels) const;
  void reset();  // drops the stored vectors, keeps the training
  // A shared lock on the index: other readers go on, writers (add, train, reset) wait.
  std::shared_lock<std::shared_mutex> read_lock() const {
    return std::shared_lock<std::shared_mutex>(mutex_);
  }

  // Makes an empty index trained with the given quantizers (e.g. another library's):
  // coarse_centroids (nlist, ivf_d), pq_centroids (pq_m, ksub, dsub), sub-quantizer m coding
  // x[m * dsub, (m + 1) * dsub) of the (rotated) vector; with OPQ, after set_rotation().
  void set_trained(const float* coarse_centroids, const float* pq_centroids);
  // Appends n vectors already encoded against `list`'s centroid: codes (n, pq_m) with values
  // < 2^pq_bits, ids (n,).
  void add_encoded(idx_t list, idx_t n, const uint8_t* codes, const idx_t* ids);
  // codes: (list_size(list), pq_m), vector-major, copied out of the blocked layout.
  void list_codes(idx_t list, uint8_t* codes) const;
  const idx_t* list_ids(idx_t list) const;  // (list_size(list),)
  IvfPqConcatenatedLists concatenated_lists() const;  // 8-bit codes only

  void save(const std::string& path) const;  // atomic: temp file + rename
  static std::unique_ptr<IvfPqIndex> load(const std::string& path, bool mmap, bool verify);

  int d() const { return d_in_; }      // dimension of the vectors given and re-ranked
  int ivf_d() const { return d_; }     // dimension the coarse quantizer and the PQ work in
  int opq_m() const { return opq_m_; }  // 0: no OPQ rotation
  bool has_rotation() const { return opq_m_ > 0; }
  bool rotation_is_set() const { return !rotation_.empty(); }
  const float* rotation() const { return rotation_.data(); }  // (ivf_d, d) once set
  idx_t nlist() const { return nlist_; }
  int pq_m() const { return pq_m_; }
  int pq_bits() const { return pq_bits_; }
  int ksub() const { return 1 << pq_bits_; }
  int block_size() const { return pq_bits_ == 4 ? kFastScanBlock : kBlock; }
  int dsub() const { return d_ / pq_m_; }
  Metric metric() const { return metric_; }
  uint64_t seed() const { return seed_; }
  bool by_residual() const { return by_residual_; }  // PQ of residuals (true) or of the vectors
  bool is_trained() const { return is_trained_; }
  bool is_mmapped() const { return mapped_ != nullptr; }
  idx_t ntotal() const { return ntotal_; }
  idx_t list_size(idx_t list) const;  // throws on a list out of [0, nlist)
  const float* coarse_centroids() const { return coarse_centroids_.data(); }  // (nlist, ivf_d)
  const float* pq_centroids() const { return pq_centroids_.data(); }  // (pq_m, ksub, dsub)
  // k-means objective (sum of squared distances) after the last coarse training iteration
  double coarse_objective() const { return coarse_objective_; }
  IvfPqTrainParams train_params;

 private:
  struct List {
    const uint8_t* codes = nullptr;  // blocked as CodeLayout says (code_layout.h)
    const idx_t* ids = nullptr;      // (size,)
    const float* terms = nullptr;    // 8-bit L2 only: (size rounded up to kBlock,) ||r||^2 + 2<c, r>
    idx_t size = 0;
  };
  struct OwnedList {
    std::vector<uint8_t> codes;
    std::vector<idx_t> ids;
    std::vector<float> terms;
  };
  struct Derived;  // packed quantizers and tables, rebuilt from the trained parameters

  void check_trained(const char* what) const;
  void check_writable(const char* what) const;
  void check_list(idx_t list) const;
  // Throws if the mapped file was truncated (nothing to do for an index in memory).
  void check_mapping() const;
  void check_new_ids(idx_t n, const idx_t* ids) const;  // new_ids.h, against the stored ones
  void rotate_unlocked(idx_t n, const float* x, float* out) const;
  // x (n, d) rotated into buffer (n, ivf_d), or x itself without OPQ.
  const float* rotated(idx_t n, const float* x, std::vector<float>& buffer) const;
  bool has_terms() const { return metric_ == Metric::L2 && pq_bits_ == 8; }  // per-vector terms
  void append(idx_t list, const uint8_t* code, idx_t id);  // one vector; the caller owns `list`
  // n encoded vectors to their lists (ids, or first_id + i where ids is nullptr); ntotal unchanged
  void append_batch(idx_t n, const idx_t* list_of, const uint8_t* codes, const idx_t* ids,
                    idx_t first_id);
  void rebuild_derived();
  void rebuild_list_views();
  void encode(idx_t n, const float* x, idx_t* list_of, uint8_t* codes) const;
  // The look-up tables (nq, pq_m, ksub) of nq queries x (nq, ivf_d), computed together: each
  // sub-quantizer's centroids are read once per four queries.
  void query_tables(idx_t nq, const float* x, float* luts) const;
  float reconstruction_term(idx_t list, const uint8_t* code) const;
  struct ScanBuffers;
  void scan_lists(const float* lut, const QuantizedTable* qtable, const idx_t* probes,
                  const float* probe_dist, int p0, int p1, TopK& heap, ScanBuffers& buffers) const;
  void fast_scan_lists(const float* lut, const idx_t* probes, const float* probe_dist, int p0,
                       int p1, TopK& heap, ScanBuffers& buffers) const;  // ivf_pq_fast_scan.cpp
  // Queries [q0, q1) of a batch into heaps[q - q0], several per pass over a list's codes.
  void fast_scan_queries(const float* x, idx_t q0, idx_t q1, const idx_t* probes,
                         const float* probe_dist, int nprobe, TopK* heaps,
                         ScanBuffers& buffers) const;  // ivf_pq_fast_scan.cpp
  // The scan of the probed lists for queries x (n, d_: rotated with OPQ) and, when params has
  // re-ranking vectors, the re-ranking of each query's k * k_factor candidates against x_rerank
  // (n, d_in_: the queries as given), query by query (ivf_pq_scan.cpp).
  struct PreassignedSearch;  // its strategies
  void search_preassigned(idx_t n, const float* x, const float* x_rerank, idx_t k,
                          const idx_t* probes, const float* probe_dist, int nprobe,
                          const IvfPqSearchParams& params, float* distances,
                          idx_t* labels) const;
  void rerank(idx_t n, const float* x, idx_t k, idx_t k_candidates, const idx_t* cand_labels,
              const IvfPqSearchParams& params, float* distances, idx_t* labels) const;
  // Pushes the exact distances of candidates (count,) to best, skipping -1 and ids without a row;
  // returns the largest such id, or -1. xq: (d_in_,), row: (d_in_,) scratch.
  idx_t rerank_query(const float* xq, const idx_t* candidates, idx_t count,
                     const IvfPqSearchParams& params, TopK& best, std::vector<float>& row) const;

  int d_in_;  // d(): input vectors, re-ranking
  int d_;     // ivf_d(): rotated vectors, coarse centroids, PQ
  idx_t nlist_;
  int pq_m_;
  int pq_bits_;
  Metric metric_;
  uint64_t seed_;
  bool by_residual_;
  int opq_m_;
  std::vector<float> rotation_;                     // (d_, d_in_), empty until set
  std::unique_ptr<PackedVectors> rotation_packed_;  // its rows packed for the GEMM
  bool is_trained_ = false;
  idx_t ntotal_ = 0;
  double coarse_objective_ = 0.0;
  std::vector<float> coarse_centroids_;  // (nlist, d)
  std::vector<float> pq_centroids_;      // (pq_m, ksub, dsub)
  std::unique_ptr<Derived> derived_;
  std::vector<List> lists_;
  std::vector<OwnedList> owned_;  // empty when memory-mapped
  std::shared_ptr<MappedFile> mapped_;
  mutable std::shared_mutex mutex_;  // shared: searches and reads; exclusive: changes
};

}  // namespace retro
