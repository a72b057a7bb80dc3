#include "index_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "checksum.h"
#include "ivf_pq_internal.h"
#include "retro/error.h"

namespace retro {

MappedFile::MappedFile(const std::string& path, bool mmap) : path_(path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer before the type check refuses it.
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  RETRO_CHECK(fd >= 0, "cannot open index file '%s': %s", path.c_str(), std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorKind::Runtime, "'" + path + "' is not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) {
    ::close(fd);
    throw Error(ErrorKind::Runtime, "index file '" + path + "' is empty");
  }
  if (mmap) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      RETRO_THROW("cannot memory-map '%s': %s", path.c_str(), std::strerror(error));
    }
    data_ = static_cast<const uint8_t*>(p);
    fd_ = fd;
    return;
  }
  std::unique_ptr<uint8_t[]> buffer;
  try {
    buffer.reset(new uint8_t[size_]);
  } catch (const std::bad_alloc&) {
    ::close(fd);
    throw;
  }
  size_t done = 0;
  while (done < size_) {
    ssize_t got = ::read(fd, buffer.get() + done, size_ - done);
    if (got <= 0) {
      ::close(fd);
      throw Error(ErrorKind::Runtime, "cannot read index file '" + path + "'");
    }
    done += static_cast<size_t>(got);
  }
  ::close(fd);
  data_ = buffer.release();
}

MappedFile::~MappedFile() {
  if (fd_ >= 0) {
    ::munmap(const_cast<uint8_t*>(data_), size_);
    ::close(fd_);
  } else {
    delete[] data_;
  }
}

void MappedFile::check_intact() const {
  if (fd_ < 0) return;
  struct stat st;
  RETRO_CHECK(::fstat(fd_, &st) == 0, "cannot stat the mapped index file '%s': %s",
              path_.c_str(), std::strerror(errno));
  RETRO_CHECK(static_cast<size_t>(st.st_size) >= size_,
              "the index file '%s' was truncated while memory-mapped: %llu bytes, %zu when loaded "
              "(load it again, or load with mmap=False to hold a copy)",
              path_.c_str(), static_cast<unsigned long long>(st.st_size), size_);
}

namespace {

constexpr uint64_t kAlign = 64;
uint64_t align_up(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Writes to a temporary file beside `path`, then renames it over `path`.
class AtomicWriter {
 public:
  explicit AtomicWriter(const std::string& path)
      : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    RETRO_CHECK(fd_ >= 0, "cannot create '%s': %s", tmp_.c_str(), std::strerror(errno));
  }
  ~AtomicWriter() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  void write_at(uint64_t offset, const void* data, size_t bytes) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    while (bytes > 0) {
      ssize_t n = ::pwrite(fd_, p, bytes, static_cast<off_t>(offset));
      RETRO_CHECK(n > 0, "cannot write '%s': %s", tmp_.c_str(), std::strerror(errno));
      p += n;
      offset += static_cast<uint64_t>(n);
      bytes -= static_cast<size_t>(n);
    }
  }
  void commit() {
    RETRO_CHECK(::fsync(fd_) == 0, "cannot flush '%s': %s", tmp_.c_str(), std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int error = errno;
      ::unlink(tmp_.c_str());
      throw Error(ErrorKind::Runtime, format_message("cannot rename '%s' to '%s': %s", tmp_.c_str(),
                                                     path_.c_str(), std::strerror(error)));
    }
    sync_directory();
  }
  // Flushes the rename: the directory's entry of the new file.
  void sync_directory() const {
    const size_t slash = path_.find_last_of('/');
    const std::string directory = slash == std::string::npos ? "." : path_.substr(0, slash + 1);
    const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    RETRO_CHECK(fd >= 0, "cannot open the directory of '%s': %s", path_.c_str(),
                std::strerror(errno));
    const int synced = ::fsync(fd);
    const int error = errno;
    ::close(fd);
    RETRO_CHECK(synced == 0, "cannot flush the directory of '%s': %s", path_.c_str(),
                std::strerror(error));
  }
  // Sets the file's length, so that every section, empty ones included, lies inside it.
  void resize(uint64_t bytes) {
    RETRO_CHECK(::ftruncate(fd_, static_cast<off_t>(bytes)) == 0, "cannot write '%s': %s",
                tmp_.c_str(), std::strerror(errno));
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

const char* kSectionNames[kNumSections] = {"coarse centroids", "PQ centroids", "list sizes",
                                           "codes", "ids", "terms", "OPQ rotation"};

// h's fields in the version 2/3 layout (h has no rotation).
FileHeaderV3 legacy_header(const FileHeader& h) {
  FileHeaderV3 old;
  std::memset(&old, 0, sizeof(old));
  old.common = h.common;
  old.common.num_sections = kNumLegacySections;
  std::memcpy(old.sections, h.sections, sizeof(old.sections));
  old.header_checksum = xxh64(&old, offsetof(FileHeaderV3, header_checksum));
  return old;
}

// The header at `base` as version 4 fields (an empty rotation section for versions 2 and 3).
FileHeader read_header(const uint8_t* base, uint64_t file_size, const char* name) {
  FileHeader h;
  std::memset(&h, 0, sizeof(h));
  RETRO_CHECK(file_size >= sizeof(FileHeaderCommon),
              "'%s' is not a retro index file: %llu bytes is shorter than the header", name,
              static_cast<unsigned long long>(file_size));
  std::memcpy(&h.common, base, sizeof(h.common));
  const FileHeaderCommon& c = h.common;
  RETRO_CHECK(std::memcmp(c.magic, kIndexMagic, sizeof(c.magic)) == 0,
              "'%s' is not a retro index file (bad magic bytes)", name);
  RETRO_CHECK(c.version >= kOldestIndexVersion && c.version <= kIndexVersion,
              "'%s' has index format version %u; this build reads versions %u to %u", name,
              c.version, kOldestIndexVersion, kIndexVersion);
  const bool legacy = c.version < kFirstOpqVersion;
  RETRO_CHECK(file_size >= (legacy ? sizeof(FileHeaderV3) : sizeof(FileHeader)),
              "'%s' is not a retro index file: %llu bytes is shorter than the header", name,
              static_cast<unsigned long long>(file_size));
  if (!legacy) {
    std::memcpy(&h, base, sizeof(h));
    RETRO_CHECK(h.header_checksum == xxh64(&h, offsetof(FileHeader, header_checksum)),
                "'%s' is corrupt: header checksum mismatch", name);
    return h;
  }
  FileHeaderV3 old;
  std::memcpy(&old, base, sizeof(old));
  RETRO_CHECK(old.header_checksum == xxh64(&old, offsetof(FileHeaderV3, header_checksum)),
              "'%s' is corrupt: header checksum mismatch", name);
  std::memcpy(h.sections, old.sections, sizeof(old.sections));
  h.sections[kRotationSection] = FileSection{align_up(sizeof(FileHeaderV3)), 0, xxh64(nullptr, 0)};
  return h;
}

}  // namespace

void IvfPqIndex::save(const std::string& path) const {
  std::shared_lock<std::shared_mutex> lock(mutex_);
  check_mapping();
  FileHeader h;
  std::memset(&h, 0, sizeof(h));
  FileHeaderCommon& c = h.common;
  std::memcpy(c.magic, kIndexMagic, sizeof(c.magic));
  c.version = has_rotation() ? kFirstOpqVersion : pq_bits_ == 4 ? 3 : 2;
  c.index_type = by_residual_ ? kIndexTypeIvfPq : kIndexTypeIvfPqNoResidual;
  c.metric = static_cast<uint32_t>(metric_);
  c.pq_bits = static_cast<uint32_t>(pq_bits_);
  c.d = static_cast<uint64_t>(d_in_);
  c.nlist = static_cast<uint64_t>(nlist_);
  c.pq_m = static_cast<uint64_t>(pq_m_);
  c.ntotal = static_cast<uint64_t>(ntotal_);
  c.seed = seed_;
  c.is_trained = is_trained_ ? 1 : 0;
  c.num_sections = kNumSections;
  c.coarse_objective = coarse_objective_;
  h.opq_m = static_cast<uint32_t>(opq_m_);
  h.opq_d = has_rotation() ? static_cast<uint32_t>(d_) : 0;
  const bool legacy = !has_rotation();

  const CodeLayout layout = layout_of(*this);
  std::vector<int64_t> sizes(nlist_);
  uint64_t padded_total = 0, code_bytes = 0;
  for (idx_t l = 0; l < nlist_; ++l) {
    sizes[l] = lists_[l].size;
    padded_total += layout.padded(lists_[l].size);
    code_bytes += layout.bytes(lists_[l].size);
  }
  const uint64_t bytes[kNumSections] = {coarse_centroids_.size() * sizeof(float),
                                        pq_centroids_.size() * sizeof(float),
                                        sizes.size() * sizeof(int64_t),
                                        code_bytes,
                                        static_cast<uint64_t>(ntotal_) * sizeof(int64_t),
                                        has_terms() ? padded_total * sizeof(float) : 0,
                                        rotation_.size() * sizeof(float)};
  uint64_t offset = align_up(legacy ? sizeof(FileHeaderV3) : sizeof(FileHeader));
  for (int s = 0; s < kNumSections; ++s) {
    h.sections[s].offset = offset;
    h.sections[s].bytes = bytes[s];
    offset = align_up(offset + bytes[s]);
  }

  AtomicWriter out(path);
  out.resize(offset);
  auto write_section = [&](int s, const void* data) {
    out.write_at(h.sections[s].offset, data, bytes[s]);
    h.sections[s].checksum = xxh64(data, bytes[s]);
  };
  write_section(0, coarse_centroids_.data());
  write_section(1, pq_centroids_.data());
  write_section(2, sizes.data());
  // The lists are concatenated; each section's checksum covers the concatenation.
  std::vector<uint8_t> codes(bytes[3]);
  std::vector<int64_t> ids(ntotal_);
  std::vector<float> terms(bytes[5] / sizeof(float));
  uint64_t vector_pos = 0, padded_pos = 0, code_pos = 0;
  for (idx_t l = 0; l < nlist_; ++l) {
    const List& list = lists_[l];
    const uint64_t np = layout.padded(list.size);
    if (list.size == 0) continue;
    std::memcpy(codes.data() + code_pos, list.codes, layout.bytes(list.size));
    std::memcpy(ids.data() + vector_pos, list.ids, list.size * sizeof(int64_t));
    if (has_terms()) std::memcpy(terms.data() + padded_pos, list.terms, np * sizeof(float));
    vector_pos += static_cast<uint64_t>(list.size);
    padded_pos += np;
    code_pos += layout.bytes(list.size);
  }
  write_section(3, codes.data());
  write_section(4, ids.data());
  write_section(5, terms.data());
  write_section(kRotationSection, rotation_.data());
  if (legacy) {
    const FileHeaderV3 old = legacy_header(h);
    out.write_at(0, &old, sizeof(old));
  } else {
    h.header_checksum = xxh64(&h, offsetof(FileHeader, header_checksum));
    out.write_at(0, &h, sizeof(h));
  }
  out.commit();
}

std::unique_ptr<IvfPqIndex> IvfPqIndex::load(const std::string& path, bool mmap, bool verify) {
  auto file = std::make_shared<MappedFile>(path, mmap);
  const uint8_t* base = file->data();
  const uint64_t file_size = file->size();
  const char* name = path.c_str();
  const FileHeader full = read_header(base, file_size, name);
  const FileHeaderCommon& h = full.common;
  const bool legacy = h.version < kFirstOpqVersion;
  RETRO_CHECK((h.index_type == kIndexTypeIvfPq ||
               (h.index_type == kIndexTypeIvfPqNoResidual && h.version >= 3)) &&
                  static_cast<int>(h.num_sections) == (legacy ? kNumLegacySections : kNumSections),
              "'%s' holds an index type this build does not know (type %u)", name, h.index_type);
  const uint64_t ivf_d = full.opq_m > 0 ? full.opq_d : h.d;
  RETRO_CHECK(h.d > 0 && h.d <= (1u << 20) && h.nlist > 0 && h.nlist <= (1ull << 40) &&
                  ivf_d > 0 && ivf_d <= h.d && h.pq_m > 0 && h.pq_m <= ivf_d &&
                  h.ntotal <= (1ull << 48) && h.nlist * sizeof(int64_t) <= file_size,
              "'%s' is corrupt: implausible parameters in the header", name);
  RETRO_CHECK(h.pq_bits == 8 || h.version >= 3,
              "'%s' is corrupt: %u-bit codes in a version %u file (4-bit codes need version 3)",
              name, h.pq_bits, h.version);

  std::unique_ptr<IvfPqIndex> index;
  try {
    index = std::make_unique<IvfPqIndex>(
        static_cast<int>(h.d), static_cast<idx_t>(h.nlist), static_cast<int>(h.pq_m),
        static_cast<int>(h.pq_bits), static_cast<Metric>(h.metric), h.seed,
        h.index_type == kIndexTypeIvfPq, static_cast<int>(full.opq_m),
        static_cast<int>(full.opq_d));
  } catch (const Error& e) {
    throw Error(ErrorKind::Runtime, "'" + path + "' is corrupt: " + e.what());
  }
  const uint64_t ksub = uint64_t(1) << h.pq_bits;
  const uint64_t trained_bytes = h.is_trained ? 1 : 0;
  const uint64_t rotation_bytes = ivf_d * h.d * sizeof(float);
  const uint64_t rotation_size = full.sections[kRotationSection].bytes;
  // A rotation is there with OPQ once set, so always in a trained index with OPQ.
  const bool rotation_size_ok = full.opq_m == 0
                                    ? rotation_size == 0
                                    : rotation_size == rotation_bytes ||
                                          (rotation_size == 0 && !h.is_trained);
  RETRO_CHECK(rotation_size_ok, "'%s' is corrupt: section '%s' has the wrong size", name,
              kSectionNames[kRotationSection]);
  const uint64_t expected[3] = {trained_bytes * h.nlist * ivf_d * sizeof(float),
                                trained_bytes * h.pq_m * ksub * (ivf_d / h.pq_m) * sizeof(float),
                                h.nlist * sizeof(int64_t)};
  const uint64_t header_size = legacy ? sizeof(FileHeaderV3) : sizeof(FileHeader);
  for (int s = 0; s < kNumSections; ++s) {
    const FileSection& sec = full.sections[s];
    RETRO_CHECK(sec.offset % kAlign == 0 && sec.offset >= header_size &&
                    sec.offset <= file_size && sec.bytes <= file_size - sec.offset,
                "'%s' is truncated or corrupt: section '%s' lies outside the file", name,
                kSectionNames[s]);
    if (s < 3)
      RETRO_CHECK(sec.bytes == expected[s], "'%s' is corrupt: section '%s' has the wrong size",
                  name, kSectionNames[s]);
    const bool small = s < 3 || s == kRotationSection;
    if (small || verify)
      RETRO_CHECK(xxh64(base + sec.offset, sec.bytes) == sec.checksum,
                  "'%s' is corrupt: checksum mismatch in section '%s'", name, kSectionNames[s]);
  }
  RETRO_CHECK(h.is_trained || h.ntotal == 0, "'%s' is corrupt: untrained index with vectors",
              name);
  IvfPqIndex& ix = *index;
  const CodeLayout layout = layout_of(ix);
  std::vector<int64_t> sizes(h.nlist);
  std::memcpy(sizes.data(), base + full.sections[2].offset, full.sections[2].bytes);
  uint64_t total = 0, padded_total = 0, code_bytes = 0;
  for (int64_t size : sizes) {
    RETRO_CHECK(size >= 0 && static_cast<uint64_t>(size) <= h.ntotal,
                "'%s' is corrupt: invalid list size", name);
    total += static_cast<uint64_t>(size);
    padded_total += layout.padded(size);
    code_bytes += layout.bytes(size);
  }
  const bool has_terms = ix.has_terms();
  RETRO_CHECK(total == h.ntotal, "'%s' is corrupt: list sizes do not add up to ntotal", name);
  RETRO_CHECK(full.sections[3].bytes == code_bytes &&
                  full.sections[4].bytes == h.ntotal * sizeof(int64_t) &&
                  full.sections[5].bytes == (has_terms ? padded_total * sizeof(float) : 0),
              "'%s' is corrupt: codes, ids or terms section has the wrong size", name);

  if (rotation_size > 0) {
    try {
      ix.set_rotation(reinterpret_cast<const float*>(base + full.sections[kRotationSection].offset));
    } catch (const Error& e) {
      throw Error(ErrorKind::Runtime, "'" + path + "' is corrupt: " + e.what());
    }
  }
  ix.coarse_objective_ = h.coarse_objective;
  if (h.is_trained) {
    const float* c = reinterpret_cast<const float*>(base + full.sections[0].offset);
    ix.coarse_centroids_.assign(c, c + h.nlist * ivf_d);
    const float* p = reinterpret_cast<const float*>(base + full.sections[1].offset);
    ix.pq_centroids_.assign(p, p + full.sections[1].bytes / sizeof(float));
    ix.is_trained_ = true;
    ix.rebuild_derived();
  }
  const uint8_t* codes = base + full.sections[3].offset;
  const int64_t* ids = reinterpret_cast<const int64_t*>(base + full.sections[4].offset);
  const float* terms = reinterpret_cast<const float*>(base + full.sections[5].offset);
  for (uint64_t l = 0; l < h.nlist; ++l) {
    const uint64_t np = layout.padded(sizes[l]);
    const float* list_terms = has_terms && np > 0 ? terms : nullptr;
    if (mmap) {
      ix.lists_[l] = List{codes, ids, list_terms, sizes[l]};
    } else {
      ix.owned_[l].codes.assign(codes, codes + layout.bytes(sizes[l]));
      ix.owned_[l].ids.assign(ids, ids + sizes[l]);
      if (list_terms != nullptr) ix.owned_[l].terms.assign(list_terms, list_terms + np);
    }
    codes += layout.bytes(sizes[l]);
    ids += sizes[l];
    if (has_terms) terms += np;
  }
  ix.ntotal_ = static_cast<idx_t>(h.ntotal);
  if (mmap) {
    ix.owned_.clear();
    ix.mapped_ = std::move(file);
  } else {
    ix.rebuild_list_views();
  }
  return index;
}

}  // namespace retro
