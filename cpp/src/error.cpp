#include "retro/error.h"

#include <cstdarg>
#include <cstdio>
#include <vector>

namespace retro {

namespace {

std::string vformat(const char* fmt, va_list args) {
  va_list copy;
  va_copy(copy, args);
  int size = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::vector<char> buffer(size > 0 ? size + 1 : 1);
  std::vsnprintf(buffer.data(), buffer.size(), fmt, args);
  return std::string(buffer.data());
}

}  // namespace

std::string format_message(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::string message = vformat(fmt, args);
  va_end(args);
  return message;
}

std::string failed_check_message(const char* condition, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::string message = vformat(fmt, args);
  va_end(args);
  return std::string("Error: '") + condition + "' failed: " + message;
}

}  // namespace retro
