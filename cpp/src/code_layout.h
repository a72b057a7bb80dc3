// Where the codes of vector i of an inverted list sit in its blocked code array.
//
// 8-bit codes: blocks of 64 vectors, sub-quantizer-major inside a block,
//   codes[(block * pq_m + m) * 64 + lane]
// so one 64-byte load gives the m-th code of a whole block.
//
// 4-bit codes (fast-scan): blocks of 32 vectors; the sub-quantizers go in pairs (pq_m rounded up
// to even; the padding sub-quantizer's codes are 0) and each pair fills 32 bytes:
//   byte (block * npairs + m / 2) * 32 + (m % 2) * 16 + (lane % 16), nibble lane / 16 (low, high)
// so one 32-byte load holds 32 vectors x 2 sub-quantizers: a 128-bit lane per sub-quantizer, as
// the byte shuffles (pshufb) look up their 16-entry tables per 128-bit lane.
#pragma once
#include <cstddef>
#include <cstdint>

#include "retro/types.h"

namespace retro {

struct CodeLayout {
  static constexpr int kBlock8 = 64;  // vectors per block of 8-bit codes
  static constexpr int kBlock4 = 32;  // vectors per block of 4-bit codes

  int pq_m;
  int pq_bits;  // 8 or 4

  int block() const { return pq_bits == 4 ? kBlock4 : kBlock8; }
  int pairs() const { return (pq_m + 1) / 2; }  // 4-bit: sub-quantizer pairs per vector
  size_t block_bytes() const {
    return pq_bits == 4 ? static_cast<size_t>(pairs()) * 32 : static_cast<size_t>(pq_m) * kBlock8;
  }
  idx_t blocks(idx_t n) const { return (n + block() - 1) / block(); }
  idx_t padded(idx_t n) const { return blocks(n) * block(); }  // n rounded up to whole blocks
  size_t bytes(idx_t n) const { return static_cast<size_t>(blocks(n)) * block_bytes(); }

  // code: pq_m values (< 2^pq_bits) of vector i, written into zero-initialized blocks.
  void put(uint8_t* codes, idx_t i, const uint8_t* code) const {
    uint8_t* block_start = codes + static_cast<size_t>(i / block()) * block_bytes();
    const int lane = static_cast<int>(i % block());
    for (int m = 0; m < pq_m; ++m) {
      if (pq_bits == 4) {
        uint8_t& byte = block_start[(m / 2) * 32 + (m % 2) * 16 + lane % 16];
        const int shift = lane < 16 ? 0 : 4;
        byte = static_cast<uint8_t>((byte & ~(0xF << shift)) | ((code[m] & 0xF) << shift));
      } else {
        block_start[m * kBlock8 + lane] = code[m];
      }
    }
  }

  // code (pq_m,) = the codes of vector i.
  void get(const uint8_t* codes, idx_t i, uint8_t* code) const {
    const uint8_t* block_start = codes + static_cast<size_t>(i / block()) * block_bytes();
    const int lane = static_cast<int>(i % block());
    for (int m = 0; m < pq_m; ++m) {
      if (pq_bits == 4) {
        const uint8_t byte = block_start[(m / 2) * 32 + (m % 2) * 16 + lane % 16];
        code[m] = lane < 16 ? byte & 0xF : byte >> 4;
      } else {
        code[m] = block_start[m * kBlock8 + lane];
      }
    }
  }
};

}  // namespace retro
