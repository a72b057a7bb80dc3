// An exception thrown inside an OpenMP parallel region terminates the process (std::terminate):
// ParallelErrors catches it in the thread that threw, the region runs to its end (the other
// threads skip their remaining work), and rethrow() raises the first one on the calling thread.
//
//   ParallelErrors errors;
//   #pragma omp parallel
//   {
//     std::optional<Scratch> scratch;  // allocated inside run(), where a bad_alloc is caught
//   #pragma omp for
//     for (...) errors.run([&] { if (!scratch) scratch.emplace(...); ... });
//   }
//   errors.rethrow();
#pragma once
#include <atomic>
#include <exception>
#include <mutex>

namespace retro {

class ParallelErrors {
 public:
  // Runs f unless an error was caught already; catches what f throws.
  template <class F>
  void run(F&& f) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!first_) first_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  // Throws the first caught exception, if any (outside the parallel region).
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr first_;
};

}  // namespace retro
