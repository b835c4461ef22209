// Stand-in for libFuzzer's main in builds without it (GCC, the ASan+UBSan build): runs every file of the given
// directories (or the given files) through LLVMFuzzerTestOneInput once. Missing directories are skipped, so an
// empty crashes/<target>/ needs no placeholder. Exits non-zero when no input at all was found.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fs = std::filesystem;

static void replay(const fs::path& file, size_t& count) {
  std::ifstream in(file, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::fprintf(stderr, "replay: %s (%zu bytes)\n", file.c_str(), bytes.size());
  LLVMFuzzerTestOneInput(bytes.empty() ? nullptr : bytes.data(), bytes.size());
  ++count;
}

int main(int argc, char** argv) {
  size_t count = 0;
  for (int i = 1; i < argc; ++i) {
    fs::path p(argv[i]);
    if (fs::is_directory(p)) {
      std::vector<fs::path> files;
      for (auto& e : fs::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());
      for (auto& f : files) replay(f, count);
    } else if (fs::is_regular_file(p)) {
      replay(p, count);
    }
  }
  std::printf("replayed %zu inputs without a finding\n", count);
  return count > 0 ? 0 : 1;
}
