// Stand-in for libFuzzer's main in builds without it (GCC, the ASan+UBSan build): runs every file of the given
// directories (or the given files) through LLVMFuzzerTestOneInput once. Missing directories are skipped, so an
// empty crashes/<target>/ needs no placeholder. Exits non-zero when no input at all was found.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

// Plain POSIX here (not mp::fs): fuzz targets link only the parser they test.
static bool is_directory(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
static bool is_regular_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

static void replay(const std::string& file, size_t& count) {
  std::ifstream in(file, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::fprintf(stderr, "replay: %s (%zu bytes)\n", file.c_str(), bytes.size());
  LLVMFuzzerTestOneInput(bytes.empty() ? nullptr : bytes.data(), bytes.size());
  ++count;
}

int main(int argc, char** argv) {
  size_t count = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string p(argv[i]);
    if (is_directory(p)) {
      std::vector<std::string> files;
      if (DIR* d = ::opendir(p.c_str())) {
        while (dirent* e = ::readdir(d))
          if (is_regular_file(p + "/" + e->d_name)) files.push_back(p + "/" + e->d_name);
        ::closedir(d);
      }
      std::sort(files.begin(), files.end());
      for (auto& f : files) replay(f, count);
    } else if (is_regular_file(p)) {
      replay(p, count);
    }
  }
  std::printf("replayed %zu inputs without a finding\n", count);
  return count > 0 ? 0 : 1;
}
