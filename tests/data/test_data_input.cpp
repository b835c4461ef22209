// The data resolver (minipuzzle/data_input.h) against files written by an independent Python writer
// (tests/reference/make_data_formats.py: Megatron indexed datasets in every dtype code, .npy arrays) from the same
// corpus as a token file made by `minipuzzle data`'s library: same ids, same document boundaries. Then the refusals:
// damaged Megatron indexes, truncated data, bad .npy headers, ids outside the vocabulary, and the blend rule.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/data_input.h"
#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"

using namespace mp;

namespace {

std::string formats_dir() { return test::fixtures_dir() + "/data_formats"; }

std::string scratch(const std::string& name) {
  std::string dir = test::binary_dir() + "/test_scratch/data_input/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// The corpus as `minipuzzle data` (byte tokenizer, paragraph documents) tokenizes it; with_eos appends <eos>.
const TokenFile& ours(bool with_eos) {
  static std::map<bool, TokenFile> cache;
  auto it = cache.find(with_eos);
  if (it != cache.end()) return it->second;
  DataPrepOptions o;
  o.inputs = {formats_dir() + "/corpus.txt"};
  o.output = scratch(with_eos ? "ours_eos" : "ours") + "/corpus";
  o.append_eos = with_eos;
  o.threads = 1;
  o.progress = ProgressMode::Off;
  prepare_token_files(o);
  return cache.emplace(with_eos, TokenFile::open(o.output)).first->second;
}

DataInputOptions with_vocab(uint64_t vocab, const std::string& format = "auto") {
  DataInputOptions o;
  o.vocab_size = vocab;
  o.format = format;
  return o;
}

void require_same(const TokenFile& a, const TokenFile& b) {
  REQUIRE(a.num_tokens() == b.num_tokens());
  REQUIRE(a.offsets() == b.offsets());
  REQUIRE(std::equal(a.data(), a.data() + a.num_tokens(), b.data()));
}

std::string le64(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += char(v >> (8 * i));
  return s;
}

}  // namespace

TEST_CASE("Megatron indexed datasets of every dtype code equal the token file of the same corpus", "[data_input]") {
  const TokenFile& plain = ours(false);
  REQUIRE(plain.num_documents() == 120);
  for (int code = 1; code <= 8; ++code) {
    INFO("dtype code " << code);
    const std::string prefix = formats_dir() + "/mg_" + std::to_string(code);
    // PREFIX, PREFIX.bin and PREFIX.idx name the same dataset.
    for (const std::string& spec : {prefix, prefix + ".bin", prefix + ".idx"}) require_same(open_data(spec, with_vocab(258)), plain);
    if (code >= 3) require_same(open_data(formats_dir() + "/mg_eos_" + std::to_string(code), with_vocab(258)), ours(true));
  }
  require_same(open_data(formats_dir() + "/mg_modes", with_vocab(258)), plain);
  // Sequences (at most 50 ids) are not documents: the index's document_indices group them.
  std::string idx = fs::read_file(formats_dir() + "/mg_8.idx");
  MegatronIndex ix = parse_megatron_index(reinterpret_cast<const uint8_t*>(idx.data()), idx.size(),
                                          fs::file_size(formats_dir() + "/mg_8.bin"), "mg_8.idx");
  CHECK(ix.dtype_code == 8);
  CHECK(ix.item_size == 2);
  CHECK(ix.sequence_lengths.size() > plain.num_documents());
  CHECK(ix.document_indices.size() == plain.num_documents() + 1);
  CHECK(!ix.has_modes);
}

TEST_CASE(".npy id arrays of every integer dtype and byte order equal the token file's ids", "[data_input]") {
  const TokenFile& plain = ours(false);
  for (const char* name : {"u1", "leu2", "beu2", "lei4", "bei4", "leu4", "lei8", "leu8"}) {
    INFO(name);
    TokenFile f = open_data(formats_dir() + "/npy_" + name + ".npy", with_vocab(258));
    CHECK(f.num_documents() == 1);
    REQUIRE(f.num_tokens() == plain.num_tokens());
    CHECK(std::equal(f.data(), f.data() + f.num_tokens(), plain.data()));
  }
}

TEST_CASE("ids outside the model's vocabulary and formats without a vocabulary are refused", "[data_input]") {
  // The corpus holds bytes up to 'z' (122): a 100-id model cannot embed them.
  CHECK_THROWS_WITH(open_data(formats_dir() + "/mg_4", with_vocab(100)), Catch::Contains("not below the model's vocabulary size 100"));
  CHECK_THROWS_WITH(open_data(formats_dir() + "/mg_7", with_vocab(100)), Catch::Contains("not a whole number from 0 to 99"));
  CHECK_THROWS_WITH(open_data(formats_dir() + "/npy_lei4.npy", with_vocab(100)), Catch::Contains("vocabulary"));
  CHECK_THROWS_WITH(open_data(formats_dir() + "/mg_4", with_vocab(0)), Catch::Contains("carry no vocabulary"));
  // A token file of a 258-id tokenizer for a smaller model.
  CHECK_THROWS_WITH(open_data(ours(false).path(), with_vocab(200)), Catch::Contains("vocabulary has 200 entries"));
}

TEST_CASE("damaged Megatron indexes and data files are refused with the reason", "[data_input]") {
  const std::string dir = scratch("damaged");
  const std::string idx = fs::read_file(formats_dir() + "/mg_8.idx");
  const std::string bin = fs::read_file(formats_dir() + "/mg_8.bin");
  auto refused = [&](const std::string& index, const std::string& data, const std::string& fragment) {
    fs::write_file_atomic(dir + "/d.idx", index);
    fs::write_file_atomic(dir + "/d.bin", data);
    CHECK_THROWS_WITH(open_data(dir + "/d", with_vocab(258)), Catch::Contains(fragment));
  };
  refused(idx.substr(0, 20), bin, "shorter than the 34-byte header");
  refused("XXIDIDX" + idx.substr(7), bin, "no MMIDIDX magic");
  refused(idx.substr(0, 9) + le64(2) + idx.substr(17), bin, "version 2");
  std::string bad_code = idx;
  bad_code[17] = 9;
  refused(bad_code, bin, "unknown dtype code 9");
  refused(idx.substr(0, idx.size() - 8), bin, "truncated");
  refused(idx.substr(0, 18) + le64(uint64_t(1) << 62) + idx.substr(26), bin, "more than its");
  refused(idx, bin.substr(0, bin.size() - 2), "beyond the data file");
  // The last document index must be the sequence count.
  std::string last = idx;
  last.replace(last.size() - 8, 8, le64(1));
  refused(last, bin, "document index");
  fs::write_file_atomic(dir + "/d.idx", idx);
  fs::write_file_atomic(dir + "/d.bin", bin);
  CHECK(open_data(dir + "/d", with_vocab(258)).num_documents() == 120);  // intact again
}

TEST_CASE(".npy headers: dtypes, shapes and sizes are checked", "[data_input]") {
  auto npy = [](const std::string& dict, const std::string& data) {
    std::string header = dict;
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    return std::string("\x93NUMPY\x01\x00", 8) + char(header.size() & 0xFF) + char(header.size() >> 8) + header + data;
  };
  auto parse = [](const std::string& bytes) {
    return parse_npy_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size(), "t.npy");
  };
  NpyHeader h = parse(npy("{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }", std::string(6, '\0')));
  CHECK(h.kind == 'u');
  CHECK(h.item_size == 2);
  CHECK(!h.big_endian);
  CHECK(h.count == 3);
  CHECK(h.data_offset == 128);  // 10-byte preamble + the 58-byte dict padded to a multiple of 64
  CHECK_THROWS_WITH(parse(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", std::string(12, '\0'))),
                    Catch::Contains("not an integer type"));
  CHECK_THROWS_WITH(parse(npy("{'descr': '<u2', 'fortran_order': False, 'shape': (2, 3), }", std::string(12, '\0'))),
                    Catch::Contains("2 dimensions"));
  CHECK_THROWS_WITH(parse(npy("{'descr': '<u2', 'fortran_order': False, 'shape': (4,), }", std::string(6, '\0'))),
                    Catch::Contains("truncated"));
  CHECK_THROWS_WITH(parse(npy("{'descr': '<u2', 'shape': (3,), }", std::string(6, '\0'))), Catch::Contains("fortran_order"));
  CHECK_THROWS_WITH(parse(std::string("\x93NUMPY\x01\x00\xff\xff", 10)), Catch::Contains("too long or truncated"));
  CHECK_THROWS_WITH(parse("not numpy at all"), Catch::Contains("magic"));
}

TEST_CASE("a blend takes whole documents in proportion to its weights, deterministically", "[data_input]") {
  const std::string dir = scratch("blend");
  TokenFileMetadata meta;
  meta.tokenizer_kind = "byte_level";
  meta.vocab_size = 10;
  {
    TokenFileWriter a(dir + "/a", meta);  // 40 documents of 3 ids "1 1 1"
    for (int i = 0; i < 40; ++i) a.add_document({1, 1, 1});
    a.finish();
    TokenFileWriter b(dir + "/b", meta);  // 20 documents of 2 ids "2 2"
    for (int i = 0; i < 20; ++i) b.add_document({2, 2});
    b.finish();
  }
  const std::string spec = "0.25 " + dir + "/a 0.75 " + dir + "/b";
  TokenFile f = open_data(spec, with_vocab(10));
  // As many tokens as the sources together (120 + 40), at least; whole documents only.
  CHECK(f.num_tokens() >= 160);
  CHECK(f.num_tokens() < 163);
  uint64_t from_a = 0, from_b = 0;
  for (uint64_t d = 0; d < f.num_documents(); ++d) {
    TokenSpan doc = f.document(d);
    REQUIRE((doc.size == 3 || doc.size == 2));
    REQUIRE(std::all_of(doc.begin(), doc.end(), [&](uint32_t id) { return id == (doc.size == 3 ? 1u : 2u); }));
    (doc.size == 3 ? from_a : from_b) += doc.size;
    // Greedy over tokens: after every document each source is within one document of its share.
    const double taken = double(from_a + from_b);
    REQUIRE(std::abs(double(from_a) - 0.25 * taken) <= 3.0);
  }
  // b (40 tokens, 75%) was taken about three times over, restarting from its first document.
  CHECK(from_b > 110);
  require_same(open_data(spec, with_vocab(10)), f);  // deterministic
  CHECK_THROWS_WITH(open_data("0 " + dir + "/a 1 " + dir + "/b", with_vocab(10)), Catch::Contains("positive"));
  CHECK_THROWS_WITH(open_data("0.5 " + dir + "/a " + dir + "/b", with_vocab(10)), Catch::Contains("neither a file nor a blend"));
}
