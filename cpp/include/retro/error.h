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
// "Error: '<condition>' failed: <message>", as faiss's FAISS_THROW_IF_NOT_FMT words it.
std::string failed_check_message(const char* condition, const char* fmt, ...)
    __attribute__((format(printf, 2, 3)));

}  // namespace retro

// RETRO_CHECK_ARG(cond, fmt, ...): throws InvalidArgument naming cond and the formatted message.
#define RETRO_CHECK_ARG(cond, ...) RETRO_CHECK_KIND(InvalidArgument, cond, __VA_ARGS__)
// RETRO_CHECK(cond, fmt, ...): throws Runtime naming cond and the formatted message.
#define RETRO_CHECK(cond, ...) RETRO_CHECK_KIND(Runtime, cond, __VA_ARGS__)

// RETRO_THROW_ARG(fmt, ...), RETRO_THROW(fmt, ...): the same without a condition (faiss's
// FAISS_THROW_FMT), for a branch that is itself the failure.
#define RETRO_THROW_ARG(...) \
  throw ::retro::Error(::retro::ErrorKind::InvalidArgument, ::retro::format_message(__VA_ARGS__))
#define RETRO_THROW(...) \
  throw ::retro::Error(::retro::ErrorKind::Runtime, ::retro::format_message(__VA_ARGS__))

#define RETRO_CHECK_KIND(kind, cond, ...)                                               \
  do {                                                                                  \
    if (!(cond))                                                                        \
      throw ::retro::Error(::retro::ErrorKind::kind,                                    \
                           ::retro::failed_check_message(#cond, __VA_ARGS__));          \
  } while (0)
