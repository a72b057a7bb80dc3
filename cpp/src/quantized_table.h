// An 8-bit copy of a query's look-up table: for the filtering scan of 8-bit codes (simd
// pq_filter8) and for the 4-bit fast-scan (simd pq_scan4), whose distances are these sums.
//
// Row m is quantized as lut[m][j] ~ min_m + step * q[m][j] (round to nearest, one step for all
// rows so that the byte sums add up), which is off by at most step / 2 per row. Codes go up to
// max_code = min(255, 65535 / rows), so that a sum over all rows cannot overflow 16 bits.
//
// For the filter, limit() gives the margin that makes it exact: a vector whose float distance is
// within the heap's threshold always passes, so the filtered search returns the same results as
// the float scan. The limit adds pq_m * step / 2 to the threshold, plus a relative margin for the
// rounding of float sums.
#pragma once
#include <cstdint>
#include <vector>

namespace retro {

class QuantizedTable {
 public:
  // The byte sums of the filter are 16-bit: sub-quantizers beyond this cannot be filtered.
  static constexpr int kMaxPqM = 257;

  // rows = pq_m; width = 2^pq_bits entries per row (a multiple of 16).
  explicit QuantizedTable(int pq_m, int width = 256);

  // lut: (pq_m, width) float table of one query (or query and list).
  void build(const float* lut);

  // (pq_m rounded up to even, width); the padding row is zero (pq_scan4 reads rows in pairs)
  const uint8_t* codes() const { return codes_.data(); }
  float offset() const { return offset_; }                // sum_m min_m
  float step() const { return step_; }
  // The filter's limit for a list whose vectors start from `bias`, under the heap's threshold.
  float limit(float threshold, float bias) const;
  // The filter's slack per unit of a vector's |term| (the term enters both float sums).
  float term_slack() const { return 2.0f * relative_rounding_; }
  int max_code() const { return max_code_; }

 private:
  int pq_m_, width_, max_code_;
  std::vector<uint8_t> codes_;
  std::vector<float> lows_, highs_;  // min_m, max_m
  float offset_ = 0.0f, step_ = 1.0f;
  float magnitude_ = 0.0f;  // sum_m max_j |lut[m][j]|: the scale of float rounding in the sums
  float relative_rounding_;  // bound on the relative rounding of a float sum of pq_m + 8 terms
};

}  // namespace retro
