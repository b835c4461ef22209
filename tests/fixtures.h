// Paths of test fixtures made by the reference scripts (tests/reference/*.py) and shared data.
#pragma once
#include <string>
#include <vector>

namespace mp::test {

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
