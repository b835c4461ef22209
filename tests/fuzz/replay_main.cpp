// Stand-in for libFuzzer's main in builds without it (GCC, the ASan+UBSan build): runs every file of the given
// directories (or the given files) through LLVMFuzzerTestOneInput once. Missing directories are skipped, so an
// empty crashes/<target>/ needs no placeholder. Exits non-zero when no input at all was found.
#include "fixtures.h"
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fs = mp::fs;
using mp::test::Path;

static void replay(const Path& file, size_t& count) {
  std::ifstream in(file, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::fprintf(stderr, "replay: %s (%zu bytes)\n", file.c_str(), bytes.size());
  LLVMFuzzerTestOneInput(bytes.empty() ? nullptr : bytes.data(), bytes.size());
  ++count;
}

int main(int argc, char** argv) {
  size_t count = 0;
  for (int i = 1; i < argc; ++i) {
    Path p(argv[i]);
    if (fs::is_directory(p)) {
      std::vector<Path> files;
      for (const std::string& name : fs::list_directory(p))
        if (fs::is_regular_file(p / name)) files.push_back(p / name);
      std::sort(files.begin(), files.end());
      for (auto& f : files) replay(f, count);
    } else if (fs::is_regular_file(p)) {
      replay(p, count);
    }
  }
  std::printf("replayed %zu inputs without a finding\n", count);
  return count > 0 ? 0 : 1;
}
