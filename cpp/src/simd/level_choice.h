// A run-time choice among ordered kernel levels, each needing the ones below it: a default (the
// best the CPU has unless said otherwise), or the one an environment variable names, until set()
// replaces it. The levels' names (index = level) serve the variable, errors and the bindings.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <string>

#include "retro/error.h"

namespace retro::simd {

template <class Level, size_t N>
class LevelChoice {
 public:
  // `what` names the choice in errors ("SIMD level"); `variable` is the overriding variable;
  // `best` the highest level this machine runs, `preferred` the default (<= best).
  LevelChoice(const char* what, const char* variable, const char* const (&names)[N], Level best,
              Level preferred)
      : what_(what), variable_(variable), names_(names), best_(best), preferred_(preferred) {}

  Level best() const { return best_; }
  const char* name(Level level) const { return names_[static_cast<size_t>(level)]; }

  Level parse(const std::string& name) const {
    std::string expected;
    for (size_t i = 0; i < N; ++i) {
      if (name == names_[i]) return static_cast<Level>(i);
      expected += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + names_[i];
    }
    throw Error(ErrorKind::InvalidArgument,
                std::string("unknown ") + what_ + " '" + name + "' (expected " + expected + ")");
  }

  Level get() {
    int level = level_.load(std::memory_order_relaxed);
    if (level < 0) {
      level = static_cast<int>(initial());
      level_.store(level, std::memory_order_relaxed);
    }
    return static_cast<Level>(level);
  }

  void set(Level level) {
    RETRO_CHECK_ARG(level <= best_, "%s %s is not supported by this CPU", what_, name(level));
    level_.store(static_cast<int>(level), std::memory_order_relaxed);
  }

 private:
  Level initial() const {
    const char* env = std::getenv(variable_);
    if (env == nullptr || *env == '\0') return preferred_;
    const Level wanted = parse(env);
    RETRO_CHECK_ARG(wanted <= best_, "%s=%s is not supported by this CPU", variable_, env);
    return wanted;
  }

  const char* what_;
  const char* variable_;
  const char* const (&names_)[N];
  Level best_;
  Level preferred_;
  std::atomic<int> level_{-1};  // -1 until first read
};

}  // namespace retro::simd
