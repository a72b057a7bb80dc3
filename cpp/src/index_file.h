// The on-disk format of IvfPqIndex (little-endian; version 2 for 8-bit codes, 3 for 4-bit, 4 with
// an OPQ rotation):
//
//   FileHeader (fixed size; header_checksum = xxh64 of the bytes before it, always verified)
//   sections, each at a 64-byte aligned offset, each with its own xxh64 in the header:
//     0 coarse centroids  (nlist, ivf_d) float32
//     1 PQ centroids      (pq_m, 2^pq_bits, ivf_d / pq_m) float32
//     2 list sizes        (nlist,) int64
//     3 codes             every list's blocked codes, list after list (code_layout.h)
//     4 ids               (ntotal,) int64, list after list
//     5 terms             8-bit L2 only: each list's ||r||^2 + 2<c, r> per vector, padded to 64
//                         vectors (empty otherwise)
//     6 rotation          version 4 only: (opq_d, d) float32 OPQ rotation (empty before it is set)
//
// Version 3 is version 2 plus pq_bits = 4 (fast-scan blocks of 32 vectors) and index type 2 (PQ
// of the vectors, not of their residuals; 4-bit only). Version 4 adds opq_m and opq_d to the
// header (ivf_d = opq_d; without OPQ ivf_d = d) and section 6. A file is written with the lowest
// version that holds it, so indexes without OPQ stay readable by older builds.
//
// Sections 0-2 and 6 are always verified; 3-5 when loading with verify=true (the default of the
// Python layer: one xxh64 pass, docs/RELIABILITY.md). Memory-mapped loads point the lists into a
// private mapping; a file truncated under it is detected before each use instead of faulting.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace retro {

constexpr char kIndexMagic[8] = {'R', 'E', 'T', 'R', 'O', 'I', 'D', 'X'};
constexpr uint32_t kIndexVersion = 4;       // 2: code blocks of 64 vectors; 3: 4-bit codes; 4: OPQ
constexpr uint32_t kOldestIndexVersion = 2;  // version 1 (blocks of 16) is refused
constexpr uint32_t kFirstOpqVersion = 4;
constexpr uint32_t kIndexTypeIvfPq = 1;            // PQ of the residuals to the coarse centroids
constexpr uint32_t kIndexTypeIvfPqNoResidual = 2;  // PQ of the vectors (by_residual = false)
constexpr int kNumSections = 7;        // version 4
constexpr int kNumLegacySections = 6;  // versions 2 and 3: no rotation section
constexpr int kRotationSection = 6;

struct FileSection {
  uint64_t offset;
  uint64_t bytes;
  uint64_t checksum;
};

// The fields every version starts with.
struct FileHeaderCommon {
  char magic[8];
  uint32_t version;
  uint32_t index_type;
  uint32_t metric;
  uint32_t pq_bits;
  uint64_t d;
  uint64_t nlist;
  uint64_t pq_m;
  uint64_t ntotal;
  uint64_t seed;
  uint32_t is_trained;
  uint32_t num_sections;
  double coarse_objective;
};

struct FileHeaderV3 {  // versions 2 and 3
  FileHeaderCommon common;
  FileSection sections[kNumLegacySections];
  uint64_t header_checksum;
};
static_assert(sizeof(FileHeaderV3) == 232, "the version 2/3 header layout is fixed");

struct FileHeader {  // version 4
  FileHeaderCommon common;
  uint32_t opq_m;  // 0: no OPQ rotation
  uint32_t opq_d;  // the rotation's output dimension (ivf_d), 0 without OPQ
  FileSection sections[kNumSections];
  uint64_t header_checksum;
};

// A read-only view of a whole regular file, memory-mapped (privately) or read into memory.
class MappedFile {
 public:
  MappedFile(const std::string& path, bool mmap);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Mapped: throws if the file has been truncated since it was mapped (reading a page past its
  // new end would raise SIGBUS); checked before each use of the mapping.
  void check_intact() const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;  // mapped: kept open to see the file's size
};

}  // namespace retro
