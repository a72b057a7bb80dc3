// An 8-bit copy of a query's look-up table, for the filtering scan (simd pq_filter8), and the
// margin that makes the filter exact: a vector whose float distance is within the heap's threshold
// always passes, so the filtered search returns the same results as the float scan.
//
// Row m is quantized as lut[m][j] ~ min_m + step * q[m][j] (round to nearest, one step for all
// rows so that the byte sums add up), which is off by at most step / 2 per row. The limit adds
// pq_m * step / 2 to the threshold, plus a relative margin for the rounding of float sums.
#pragma once
#include <cstdint>
#include <vector>

namespace retro {

class QuantizedTable {
 public:
  // The byte sums of the filter are 16-bit: sub-quantizers beyond this cannot be filtered.
  static constexpr int kMaxPqM = 257;

  explicit QuantizedTable(int pq_m);

  // lut: (pq_m, 256) float table of one query.
  void build(const float* lut);

  const uint8_t* codes() const { return codes_.data(); }  // (pq_m, 256)
  float offset() const { return offset_; }                // sum_m min_m
  float step() const { return step_; }
  // The filter's limit for a list whose vectors start from `bias`, under the heap's threshold.
  float limit(float threshold, float bias) const;
  // The filter's slack per unit of a vector's |term| (the term enters both float sums).
  float term_slack() const { return 2.0f * relative_rounding_; }

 private:
  int pq_m_;
  std::vector<uint8_t> codes_;
  std::vector<float> lows_, highs_;  // min_m, max_m
  float offset_ = 0.0f, step_ = 1.0f;
  float magnitude_ = 0.0f;  // sum_m max_j |lut[m][j]|: the scale of float rounding in the sums
  float relative_rounding_;  // bound on the relative rounding of a float sum of pq_m + 8 terms
};

}  // namespace retro
