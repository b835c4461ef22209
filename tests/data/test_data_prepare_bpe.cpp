// `minipuzzle data` with a tokenizer.json tokenizer (trained by tests/reference/train_tokenizers.py): each
// document in the token file equals the tokenizer's own encoding of that paragraph, plus <eos>.
#include <fstream>
#include <sstream>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"

namespace fs = mp::fs;
using mp::test::Path;

static std::string read_file(const Path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST_CASE("data preparation with a BPE tokenizer equals encoding each document", "[data][reference]") {
  Path dir = Path(MINIPUZZLE_BINARY_DIR) / "test_scratch" / "data_prepare_bpe";
  fs::remove_all(dir);
  // The NFC tokenizer when the build has ICU, else one without a normalizer.
  const char* config = MINIPUZZLE_TEST_HAVE_ICU ? "wikitext2_8192_llama3" : "shakespeare_8192_llama3";
  Path tok_path = Path(MINIPUZZLE_FIXTURES) / "tokenizers" / config / "tokenizer.json";
  mp::Tokenizer tok = mp::Tokenizer::from_file(tok_path.string());
  mp::DataPrepOptions o;
  o.progress = mp::ProgressMode::Off;
  o.inputs = {(Path(MINIPUZZLE_SHARED_DATA) / "wikitext-2-valid.txt").string()};
  o.tokenizer = tok_path.string();
  o.output = (dir / "wiki").string();
  o.append_eos = true;
  o.threads = 2;
  mp::DataPrepResult r = mp::prepare_token_files(o);
  mp::TokenFile f = mp::TokenFile::open(r.paths[0]);
  std::string text = read_file(o.inputs[0]);
  auto docs = mp::split_paragraphs(text);
  REQUIRE(f.num_documents() == docs.size());
  for (size_t d = 0; d < docs.size(); ++d) {
    std::vector<uint32_t> want = tok.encode(docs[d]);
    want.push_back(*tok.eos_id());
    REQUIRE(std::vector<uint32_t>(f.document(d).begin(), f.document(d).end()) == want);
  }
  CHECK(f.metadata().tokenizer_sha256 == tok.sha256());
  CHECK(f.vocab_size() == tok.vocab_size());
}
