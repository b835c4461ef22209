// Paths of test fixtures made by the reference scripts (tests/reference/*.py) and shared data.
#pragma once
#include "fixtures.h"
#include <string>
#include <vector>

#include "minipuzzle/fs.h"

namespace mp::test {

// A path that joins with `/` like std::filesystem::path, for tests only. Tests use mp::fs (not
// std::filesystem) for the reason in minipuzzle/fs.h; this keeps `dir / "file"` readable there.
struct Path {
  std::string s;
  Path() = default;
  Path(std::string p) : s(std::move(p)) {}
  Path(const char* p) : s(p) {}
  Path operator/(const Path& rhs) const { return Path(mp::fs::join(s, rhs.s)); }
  const std::string& string() const { return s; }
  operator const std::string&() const { return s; }
  Path filename() const { return Path(mp::fs::filename(s)); }
  Path parent_path() const { return Path(mp::fs::parent(s)); }
  std::string extension() const { return mp::fs::extension(s); }
  bool operator==(const Path& o) const { return s == o.s; }
  bool operator<(const Path& o) const { return s < o.s; }
};

inline std::string fixtures_dir() { return MINIPUZZLE_FIXTURES; }
inline std::string reference_model(const std::string& name) { return fixtures_dir() + "/models/" + name; }
inline std::vector<std::string> reference_model_names() {
  return {"hybrid_g1", "hybrid_g2_tied", "hybrid_g4_sharded"};
}
// Mixture-of-experts hybrids (Nemotron 3 style); moe_mtp is moe_g1 with NVIDIA-style `mtp.*` tensors added.
inline std::vector<std::string> moe_reference_model_names() { return {"moe_g1", "moe_grouped_latent", "moe_mtp"}; }
inline std::string shared_data(const std::string& file) { return std::string(MINIPUZZLE_SHARED_DATA) + "/" + file; }
inline std::string python() { return MINIPUZZLE_PYTHON; }
inline std::string source_dir() { return MINIPUZZLE_SOURCE_DIR; }
inline std::string binary_dir() { return MINIPUZZLE_BINARY_DIR; }

}  // namespace mp::test
