#include "quantized_table.h"

#include <algorithm>
#include <cmath>

#include "simd/kernels.h"

namespace retro {

// A float sum of N terms is off by < (N - 1) 2^-24 of the sum of their magnitudes; x3 for safety.
QuantizedTable::QuantizedTable(int pq_m, int width)
    : pq_m_(pq_m),
      width_(width),
      max_code_(std::min(255, 65535 / pq_m)),
      codes_(static_cast<size_t>(pq_m + pq_m % 2) * width, 0),
      lows_(pq_m),
      highs_(pq_m),
      relative_rounding_(3.0f * static_cast<float>(pq_m + 8) * std::ldexp(1.0f, -24)) {}

void QuantizedTable::build(const float* lut) {
  const simd::Kernels& kern = simd::kernels();
  kern.row_ranges(pq_m_, width_, lut, lows_.data(), highs_.data());
  // Four independent chains: a scalar loop over rows is a visible share of a (query, list) table.
  // The order of the double additions only moves bits far below the float result.
  float widest[4] = {}, magnitude[4] = {};
  double offset[4] = {};
  int m = 0;
  for (; m + 4 <= pq_m_; m += 4)
    for (int u = 0; u < 4; ++u) {
      const float lo = lows_[m + u], hi = highs_[m + u];
      widest[u] = std::max(widest[u], hi - lo);
      offset[u] += lo;
      magnitude[u] += std::max(std::fabs(lo), std::fabs(hi));
    }
  for (; m < pq_m_; ++m) {
    widest[0] = std::max(widest[0], highs_[m] - lows_[m]);
    offset[0] += lows_[m];
    magnitude[0] += std::max(std::fabs(lows_[m]), std::fabs(highs_[m]));
  }
  const float widest_row = std::max(std::max(widest[0], widest[1]), std::max(widest[2], widest[3]));
  step_ = widest_row > 0.0f ? widest_row / static_cast<float>(max_code_) : 1.0f;
  offset_ = static_cast<float>((offset[0] + offset[1]) + (offset[2] + offset[3]));
  magnitude_ = static_cast<float>((magnitude[0] + magnitude[1]) + (magnitude[2] + magnitude[3]));
  kern.quantize8(pq_m_, width_, lut, lows_.data(), 1.0f / step_, max_code_, codes_.data());
}

float QuantizedTable::limit(float threshold, float bias) const {
  // Quantization: step / 2 per row (x1.001 for the rounding of the quantization itself); then the
  // rounding of the exact scan's float sum and of the filter's own arithmetic, whose terms are at
  // most |bias|, the table's magnitude, the offset and step * sum <= 2 magnitudes.
  const float quantization = 0.5f * step_ * static_cast<float>(pq_m_) * 1.001f;
  const float rounding = relative_rounding_ * (std::fabs(threshold) + 2.0f * std::fabs(bias) +
                                               3.0f * magnitude_ + std::fabs(offset_));
  return threshold + quantization + rounding;
}

}  // namespace retro
