// The benchmark binaries' command line: --key=value options, each taken once by name, so that
// whatever is left over is reported as unknown.
#pragma once
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>

namespace retro_bench {

inline bool wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) return true;
  return false;
}

inline long long parse_integer(const std::string& key, const std::string& text) {
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    throw std::invalid_argument("--" + key + " needs an integer, got '" + text + "'");
  return value;
}

class CommandLine {
 public:
  CommandLine(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      const size_t eq = arg.find('=');
      if (arg.rfind("--", 0) != 0 || eq == std::string::npos)
        throw std::invalid_argument("expected --key=value, got '" + arg + "'");
      values_[arg.substr(2, eq - 2)] = arg.substr(eq + 1);
    }
  }

  long long take(const std::string& key, long long fallback) {
    const auto it = values_.find(key);
    if (it == values_.end()) return fallback;
    const long long value = parse_integer(key, it->second);
    values_.erase(it);
    return value;
  }

  std::string take_text(const std::string& key, const std::string& fallback) {
    const auto it = values_.find(key);
    if (it == values_.end()) return fallback;
    const std::string value = it->second;
    values_.erase(it);
    return value;
  }

  // Throws if an option was given that nothing took.
  void check_all_taken() const {
    if (!values_.empty()) throw std::invalid_argument("unknown option --" + values_.begin()->first);
  }

 private:
  std::map<std::string, std::string> values_;
};

// Fills opts with parse(CommandLine) -> Options. Returns -1 to go on, else the exit code: 0 after
// printing the usage for --help, 2 after printing a bad option's error and the usage.
template <typename Options, typename Parse>
int parse_command_line(int argc, char** argv, const char* program, const char* usage, Parse parse,
                       Options& opts) {
  if (wants_help(argc, argv)) {
    std::fputs(usage, stdout);
    return 0;
  }
  try {
    opts = parse(CommandLine(argc, argv));
  } catch (const std::invalid_argument& error) {
    std::fprintf(stderr, "%s: %s\n%s", program, error.what(), usage);
    return 2;
  }
  return -1;
}

}  // namespace retro_bench
