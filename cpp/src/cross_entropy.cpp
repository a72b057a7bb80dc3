#include "retro/cross_entropy.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/bfloat16.h"
#include "parallel_errors.h"
#include "retro/error.h"
#include "simd/kernels.h"

namespace retro {
namespace {

// The largest of row[0..n) in the accumulation type; NaN if any element is NaN.
template <typename T>
Accum<T> row_max(idx_t n, const T* row) {
  Accum<T> largest = -std::numeric_limits<Accum<T>>::infinity();
  bool nan = false;
  for (idx_t j = 0; j < n; ++j) {
    const Accum<T> x = widen(row[j]);
    nan |= std::isnan(x);
    largest = std::max(largest, x);
  }
  return nan ? std::numeric_limits<Accum<T>>::quiet_NaN() : largest;
}

// out[j] = exp(row[j] - shift); returns the sum. The SIMD exp for float32 and bfloat16 (widened
// into out first), std::exp for double.
template <typename T>
Accum<T> exp_shifted(idx_t n, const T* row, Accum<T> shift, Accum<T>* out) {
  if constexpr (std::is_same_v<T, double>) {
    double sum = 0.0;
    for (idx_t j = 0; j < n; ++j) sum += out[j] = std::exp(row[j] - shift);
    return sum;
  } else {
    const float* x = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      x = row;
    } else {
      for (idx_t j = 0; j < n; ++j) out[j] = widen(row[j]);
      x = out;
    }
    return simd::kernels().exp_sum(static_cast<size_t>(n), x, 1.0f, shift, out);
  }
}

void check_targets(const CrossEntropyParams& p, const int64_t* targets) {
  for (idx_t r = 0; r < p.rows; ++r) {
    const int64_t t = targets[r];
    RETRO_CHECK_ARG(t == p.ignore_index || (t >= 0 && t < p.vocab),
                    "target %lld of row %lld is outside [0, %lld) and not ignore_index %lld",
                    static_cast<long long>(t), static_cast<long long>(r),
                    static_cast<long long>(p.vocab), static_cast<long long>(p.ignore_index));
  }
}

// body(row, scratch) for every row, over the OpenMP threads; scratch holds vocab accumulators.
template <typename A, typename Body>
void for_each_row(const CrossEntropyParams& p, Body body) {
  ParallelErrors errors;
#pragma omp parallel
  {
    std::vector<A> scratch;
#pragma omp for schedule(static)
    for (idx_t r = 0; r < p.rows; ++r)
      errors.run([&] {
        scratch.resize(static_cast<size_t>(p.vocab));
        body(r, scratch.data());
      });
  }
  errors.rethrow();
}

template <typename T>
void forward(const CrossEntropyParams& p, const T* logits, const int64_t* targets,
             Accum<T>* lse, Accum<T>* loss) {
  using A = Accum<T>;
  for_each_row<A>(p, [&](idx_t r, A* scratch) {
    if (targets[r] == p.ignore_index) {
      lse[r] = loss[r] = A(0);
      return;
    }
    const T* row = logits + r * p.vocab;
    const A largest = row_max(p.vocab, row);
    // a NaN row: NaN lse and loss (the SIMD exp would clamp it to a number)
    lse[r] = std::isnan(largest) ? largest
                                 : largest + std::log(exp_shifted(p.vocab, row, largest, scratch));
    loss[r] = lse[r] - widen(row[targets[r]]);
  });
}

template <typename T>
void backward(const CrossEntropyParams& p, const T* logits, const int64_t* targets,
              const Accum<T>* lse, const Accum<T>* grad_loss, T* grad) {
  using A = Accum<T>;
  for_each_row<A>(p, [&](idx_t r, A* scratch) {
    T* out = grad + r * p.vocab;
    if (targets[r] == p.ignore_index) {
      std::fill(out, out + p.vocab, narrow<T>(A(0)));
      return;
    }
    const A g = grad_loss[r];
    A* probs = scratch;  // float32 and float64: the gradient row itself
    if constexpr (std::is_same_v<T, A>) probs = out;
    exp_shifted(p.vocab, logits + r * p.vocab, lse[r], probs);  // softmax: lse normalises
    probs[targets[r]] -= A(1);
    for (idx_t j = 0; j < p.vocab; ++j) out[j] = narrow<T>(g * probs[j]);
  });
}

void check_params(const CrossEntropyParams& p) {
  RETRO_CHECK_ARG(p.rows >= 0 && p.vocab >= 1, "need rows >= 0 and vocab >= 1, got %lld, %lld",
                  static_cast<long long>(p.rows), static_cast<long long>(p.vocab));
  RETRO_CHECK_ARG(p.dtype != DType::Float16, "cross_entropy takes float32, float64 or bfloat16 "
                  "logits on the CPU");
}

}  // namespace

void cross_entropy_forward(const CrossEntropyParams& p, const void* logits, const int64_t* targets,
                           void* lse, void* loss) {
  check_params(p);
  check_targets(p, targets);
  switch (p.dtype) {
    case DType::Float64:
      return forward(p, static_cast<const double*>(logits), targets, static_cast<double*>(lse),
                     static_cast<double*>(loss));
    case DType::BFloat16:
      return forward(p, static_cast<const bfloat16*>(logits), targets, static_cast<float*>(lse),
                     static_cast<float*>(loss));
    default:
      return forward(p, static_cast<const float*>(logits), targets, static_cast<float*>(lse),
                     static_cast<float*>(loss));
  }
}

void cross_entropy_backward(const CrossEntropyParams& p, const void* logits,
                            const int64_t* targets, const void* lse, const void* grad_loss,
                            void* grad) {
  check_params(p);
  check_targets(p, targets);
  switch (p.dtype) {
    case DType::Float64:
      return backward(p, static_cast<const double*>(logits), targets,
                      static_cast<const double*>(lse), static_cast<const double*>(grad_loss),
                      static_cast<double*>(grad));
    case DType::BFloat16:
      return backward(p, static_cast<const bfloat16*>(logits), targets,
                      static_cast<const float*>(lse), static_cast<const float*>(grad_loss),
                      static_cast<bfloat16*>(grad));
    default:
      return backward(p, static_cast<const float*>(logits), targets,
                      static_cast<const float*>(lse), static_cast<const float*>(grad_loss),
                      static_cast<float*>(grad));
  }
}

}  // namespace retro
