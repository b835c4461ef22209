// safetensors reader/writer: round trip, and every malformed header refused with a message naming the problem.
#include <ATen/ATen.h>

#include <fstream>

#include "catch.h"
#include "minipuzzle/error.h"
#include "minipuzzle/safetensors.h"
#include "run_command.h"

using namespace mp;

// Builds a file from a raw header string and a data section of `data_bytes` zero bytes.
static std::string make_file(const std::string& dir, const std::string& name, const std::string& header,
                             size_t data_bytes, int64_t claimed_header_len = -1) {
  std::string path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary);
  uint64_t n = claimed_header_len >= 0 ? uint64_t(claimed_header_len) : header.size();
  for (int i = 0; i < 8; ++i) out.put(char((n >> (8 * i)) & 0xff));
  out << header;
  out << std::string(data_bytes, '\0');
  return path;
}

static std::string error_of(const std::string& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("safetensors round trip keeps names, dtypes, shapes and bytes", "[io][safetensors]") {
  std::string dir = test::temp_dir("st_roundtrip");
  std::map<std::string, at::Tensor> in{{"a", at::randn({3, 5})},
                                       {"b", at::randn({7}).to(at::kBFloat16)},
                                       {"c", at::arange(10, at::kLong)},
                                       {"empty", at::empty({0, 4})}};
  save_safetensors(dir + "/x.safetensors", in);
  auto f = SafetensorsFile::open(dir + "/x.safetensors");
  REQUIRE(f->tensors().size() == 4);
  for (auto& [name, t] : in) {
    at::Tensor got = f->tensor(name);
    CHECK(got.scalar_type() == t.scalar_type());
    CHECK(got.sizes() == t.sizes());
    CHECK(at::equal(got, t));
  }
}

TEST_CASE("malformed safetensors files give one clear error each", "[io][safetensors]") {
  std::string dir = test::temp_dir("st_bad");
  const std::string ok = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  CHECK(error_of(make_file(dir, "good.safetensors", ok, 16)).empty());

  SECTION("truncated data") {
    CHECK_THAT(error_of(make_file(dir, "trunc.safetensors", ok, 8)), MP_CONTAINS("past the end"));
  }
  SECTION("file shorter than the length field") {
    std::ofstream(dir + "/tiny.safetensors") << "abc";
    CHECK_THAT(error_of(dir + "/tiny.safetensors"), MP_CONTAINS("too short"));
  }
  SECTION("header length past the end of the file") {
    CHECK_THAT(error_of(make_file(dir, "hdr.safetensors", ok, 16, 5000)), MP_CONTAINS("runs past the end"));
  }
  SECTION("absurd header length") {
    CHECK_THAT(error_of(make_file(dir, "huge.safetensors", ok, 16, int64_t(1) << 40)),
               MP_CONTAINS("exceeds the limit"));
  }
  SECTION("overlapping offsets") {
    std::string h = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
    CHECK_THAT(error_of(make_file(dir, "overlap.safetensors", h, 16)), MP_CONTAINS("overlap"));
  }
  SECTION("unknown dtype") {
    std::string h = R"({"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}})";
    CHECK_THAT(error_of(make_file(dir, "dtype.safetensors", h, 4)), MP_CONTAINS("unknown dtype"));
  }
  SECTION("shape x dtype disagrees with the byte length") {
    std::string h = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})";
    CHECK_THAT(error_of(make_file(dir, "len.safetensors", h, 16)), MP_CONTAINS("shape x dtype"));
  }
  SECTION("shape product overflows") {
    std::string h = R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})";
    CHECK_THAT(error_of(make_file(dir, "ovf.safetensors", h, 16)), MP_CONTAINS("overflows"));
  }
  SECTION("header is not JSON") {
    CHECK_THAT(error_of(make_file(dir, "json.safetensors", "{not json", 0)), MP_CONTAINS("not valid JSON"));
  }
}
