// XXH64 (Yann Collet's xxHash, 64-bit variant, seed 0): the checksum of index file sections.
#pragma once
#include <cstddef>
#include <cstdint>

namespace retro {

uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);

}  // namespace retro
