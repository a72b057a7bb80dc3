// Errors thrown by the core: a message that names the problem, like faiss's FAISS_THROW_IF_NOT_FMT.
#pragma once
#include <stdexcept>
#include <string>

namespace retro {

// InvalidArgument: the caller passed something wrong (maps to ValueError in Python).
// Runtime: the state or a file is wrong (maps to RuntimeError).
enum class ErrorKind { InvalidArgument, Runtime };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

std::string format_message(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace retro

// RETRO_CHECK_ARG(cond, fmt, ...): throws InvalidArgument with the formatted message.
#define RETRO_CHECK_ARG(cond, ...)                                                             \
  do {                                                                                         \
    if (!(cond))                                                                               \
      throw ::retro::Error(::retro::ErrorKind::InvalidArgument,                               \
                           ::retro::format_message(__VA_ARGS__)); \
  } while (0)

// RETRO_CHECK(cond, fmt, ...): throws Runtime with the formatted message.
#define RETRO_CHECK(cond, ...)                                                                 \
  do {                                                                                         \
    if (!(cond))                                                                               \
      throw ::retro::Error(::retro::ErrorKind::Runtime,                                       \
                           ::retro::format_message(__VA_ARGS__)); \
  } while (0)
