// Stand-in for gloo/context.h (see ../README.md): held through std::shared_ptr; the one member function named in
// an inline body of ProcessGroupGloo.hpp is declared so that body parses (it is never called from our code).
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
