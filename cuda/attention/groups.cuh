// Which rows of the tensors each CTA works on. A group is a set of query slots that all attend
// to one set of key slots; slots map to tensor rows by index arithmetic (the shift of CCA by
// m - 1, the chunk boundaries, the neighbour lengths), so there are no copies around the kernels.
// A grid covers either every query row once (forward, grad q) or every key row once (grad k, v).
#pragma once
#include <cstdint>

#include "retro/attention.h"

namespace retro::cuda {
namespace {

constexpr int kTile = 64;          // query or key slots per tile
constexpr int kMaxKeySlots = 512;  // the most keys of one group (K R for CCA): their flags fit

// Which side's rows a grid of groups covers exactly once: the query side for the forward and the
// query gradient, the key side for the key and value gradients.
enum class Cover { Queries, Keys };

// One side of a group: slot s is tensor row row0 + s; it is real when s < slots and
// s % seg < lens[s / seg] (no lens: every slot is real).
struct Slots {
  int64_t row0 = 0;
  int slots = 0;
  int seg = 1;
  const int32_t* lens = nullptr;

  __device__ bool real(int s) const {
    if (s >= slots) return false;
    if (lens == nullptr) return true;
    const int len = min(max(__ldg(lens + s / seg), 0), seg);  // lengths are clamped to [0, R]
    return s % seg < len;
  }
};

struct Group {
  Slots q, k;
};

// Everything a kernel needs to find its group: the sizes of one call, by value.
struct Geometry {
  RetroAttention op;
  int64_t tokens, chunks, neighbours, nbr_len, chunk_size, q_offset;
  int64_t first_chunk;       // CCA, query cover: the chunk of q's first row (-1 before m - 1)
  int64_t groups_per_batch;  // groups of one batch element in this cover
  const int32_t* nbr_lens;   // (B, L, K) on the device, or nullptr
};

__device__ Slots neighbours_of_chunk(const Geometry& g, int64_t b, int64_t l) {
  Slots s;
  s.row0 = (b * g.chunks + l) * g.neighbours * g.nbr_len;
  s.slots = static_cast<int>(g.neighbours * g.nbr_len);
  s.seg = static_cast<int>(g.nbr_len);
  s.lens = g.nbr_lens == nullptr ? nullptr : g.nbr_lens + (b * g.chunks + l) * g.neighbours;
  return s;
}

__device__ Slots contiguous(int64_t row0, int64_t rows) {
  Slots s;
  s.row0 = row0;
  s.slots = static_cast<int>(rows > 0 ? rows : 0);
  s.seg = max(s.slots, 1);
  return s;
}

__device__ Group group_of(const Geometry& g, int64_t index, Cover cover) {
  const int64_t b = index / g.groups_per_batch, c = index % g.groups_per_batch;
  const int64_t m = g.chunk_size, T = g.tokens;
  Group out;
  switch (g.op) {
    case RetroAttention::ChunkedCross: {  // positions [u m + m - 1, (u + 1) m + m - 1) -> chunk u
      const int64_t u = cover == Cover::Queries ? g.first_chunk + c : c;
      const int64_t lo = max(g.q_offset, u * m + m - 1);
      const int64_t hi = min(g.q_offset + T, (u + 1) * m + m - 1);
      out.q = contiguous(b * T + lo - g.q_offset, hi - lo);
      if (u >= 0 && u < g.chunks) out.k = neighbours_of_chunk(g, b, u);
      break;
    }
    case RetroAttention::NeighbourSelf: {  // index = (b L + l) K + j
      Slots s;
      s.row0 = index * g.nbr_len;
      s.slots = s.seg = static_cast<int>(g.nbr_len);
      s.lens = g.nbr_lens == nullptr ? nullptr : g.nbr_lens + index;
      out.q = out.k = s;
      break;
    }
    case RetroAttention::NeighbourCross: {  // chunk c's neighbours -> decoder positions of chunk c
      if (c < g.chunks) out.q = neighbours_of_chunk(g, b, c);
      out.k = contiguous(b * T + c * m, min(T, (c + 1) * m) - c * m);
      break;
    }
  }
  return out;
}

}  // namespace
}  // namespace retro::cuda
