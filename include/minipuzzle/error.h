// Errors carry context: what was expected, what was found, and (where it helps) what to do.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace mp {

// The one exception type the CLI turns into a one-line message and a non-zero exit.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  throw Error(os.str());
}

}  // namespace mp

// MP_CHECK(cond, "message parts", ...): throws mp::Error with the parts concatenated.
#define MP_CHECK(cond, ...)              \
  do {                                   \
    if (!(cond)) ::mp::fail(__VA_ARGS__); \
  } while (0)
