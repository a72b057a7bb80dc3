// The private parts of IvfPqIndex shared by its source files (ivf_pq_index.cpp: training, adding;
// ivf_pq_scan.cpp: the search's threading, the 8-bit scan, re-ranking; ivf_pq_fast_scan.cpp: the
// 4-bit scan; index_file.cpp: the file format).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "code_layout.h"
#include "distances.h"
#include "quantized_table.h"
#include "retro/ivf_pq_index.h"

namespace retro {

// Vectors per call of the 4-bit scan: the heap's threshold, hence the scan's limit, is refreshed
// between calls.
constexpr idx_t kFastScanChunk = 8 * IvfPqIndex::kFastScanBlock;

// Queries scanned together, list by list, by one thread of a 4-bit batch search.
constexpr idx_t kScanQueryBlock = 32;

struct IvfPqIndex::Derived {
  PackedVectors coarse;           // (nlist, d) for coarse assignment
  std::vector<PackedVectors> pq;  // pq_m x (ksub, dsub) for encoding
  std::vector<float> pq_t;        // (pq_m, dsub, ksub): query tables are rows contiguous in j
  std::vector<float> pq_norms;  // 4-bit L2 only: (pq_m, 16) ||r_mj||^2
};

// Per-thread scratch of a scan: one padded list's distances, or the filter's survivors; for the
// 4-bit scan also a (query, list) table, its quantized copy and a chunk's sums.
struct IvfPqIndex::ScanBuffers {
  std::vector<float> list_dist;
  std::vector<uint32_t> survivors;
  std::vector<float> query_lut, list_lut;
  std::vector<uint16_t> sums;
  std::unique_ptr<QuantizedTable> table4;
  // 4-bit, a block of queries at a time: their float tables (queries, pq_m, 16), their 8-bit
  // tables (one per query, or one per query of a pass when the tables are per list), and the
  // (list, query, probe) visits ordered by list
  std::vector<float> block_luts;
  std::vector<QuantizedTable> block_tables;
  struct Visit {
    idx_t list;
    int query, probe;
  };
  std::vector<Visit> visits;
};

inline CodeLayout layout_of(const IvfPqIndex& index) {
  return CodeLayout{index.pq_m(), index.pq_bits()};
}

}  // namespace retro
