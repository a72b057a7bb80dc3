// A run-time choice among ordered kernel levels, each needing the ones below it: a default (the
// best the CPU has unless said otherwise), or the one an environment variable names, until set()
// replaces it.
#pragma once
#include <atomic>
#include <cstdlib>
#include <string>

#include "retro/error.h"

namespace retro::simd {

template <class Level>
class LevelChoice {
 public:
  // `what` names the choice in errors ("SIMD level"); `variable` is the overriding variable.
  LevelChoice(const char* what, const char* variable, Level (*best)(),
              Level (*parse)(const std::string&), const char* (*name)(Level),
              Level (*preferred)() = nullptr)
      : what_(what), variable_(variable), best_(best), parse_(parse), name_(name),
        preferred_(preferred != nullptr ? preferred : best) {}

  Level get() {
    int level = level_.load(std::memory_order_relaxed);
    if (level < 0) {
      level = static_cast<int>(initial());
      level_.store(level, std::memory_order_relaxed);
    }
    return static_cast<Level>(level);
  }

  void set(Level level) {
    RETRO_CHECK_ARG(level <= best_(), "%s %s is not supported by this CPU", what_, name_(level));
    level_.store(static_cast<int>(level), std::memory_order_relaxed);
  }

 private:
  Level initial() const {
    const char* env = std::getenv(variable_);
    if (env == nullptr || *env == '\0') return preferred_();
    const Level wanted = parse_(env);
    RETRO_CHECK_ARG(wanted <= best_(), "%s=%s is not supported by this CPU", variable_, env);
    return wanted;
  }

  const char* what_;
  const char* variable_;
  Level (*best_)();
  Level (*parse_)(const std::string&);
  const char* (*name_)(Level);
  Level (*preferred_)();
  std::atomic<int> level_{-1};  // -1 until first read
};

}  // namespace retro::simd
