// Data arguments through the CLI (issue 18 and 24): `minipuzzle eval` on a tiny transformers-made model (vocab 97)
// reads a token file, UTF-8 text, raw ids named by --data-format, a Megatron dataset and a .npy array, and gives
// the same loss for the same ids; it refuses a file with NUL bytes or invalid UTF-8, raw ids without
// --data-format, and ids outside the vocabulary, with one line naming the file and the formats accepted.
#include <string>
#include <vector>

#include "catch.h"
#include "fixtures.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/json.h"
#include "minipuzzle/token_file.h"
#include "run_command.h"

using namespace mp;

namespace {

const std::string& dir() {
  static const std::string d = test::temp_dir("data_input_cli");
  return d;
}
std::string model() { return test::reference_model("hybrid_g1"); }

test::CommandResult eval(const std::string& data, const std::string& extra = "") {
  return test::run_command(test::minipuzzle_binary() + " eval " + model() + " --data '" + data +
                           "' --seq-len 32 --device cpu " + extra);
}
double loss_of(const test::CommandResult& r) {
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return json::parse(r.output.substr(r.output.find('{'))).at("loss").get<double>();
}
// Exit 1 and one line of error naming the file and listing the accepted formats.
void refused(const test::CommandResult& r, const std::string& file, const std::string& fragment) {
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK(r.output.find(fragment) != std::string::npos);
  CHECK(r.output.find(file) != std::string::npos);
  CHECK(r.output.find('\n') == r.output.size() - 1);
}

// 200 ids below 97: the text "THE QUICK ... 0123" (ASCII below 'a'), as bytes.
std::vector<uint32_t> ids() {
  std::string text;
  while (text.size() < 200) text += "THE QUICK BROWN FOX, 0123456789; JUMPS OVER THE LAZY DOG.\n";
  text.resize(200);
  return std::vector<uint32_t>(text.begin(), text.end());
}
std::string text_of(const std::vector<uint32_t>& v) { return std::string(v.begin(), v.end()); }
template <typename T>
std::string raw(const std::vector<uint32_t>& v) {
  std::string s;
  for (uint32_t id : v)
    for (size_t b = 0; b < sizeof(T); ++b) s += char((uint64_t(id) >> (8 * b)) & 0xFF);
  return s;
}

// The loss of `ids()` read from a token file (the reference every other kind must match).
double token_file_loss() {
  static double loss = [] {
    TokenFileMetadata meta;
    meta.tokenizer_kind = "byte_level";
    meta.vocab_size = 97;
    TokenFileWriter w(dir() + "/tok", meta);
    w.add_document(ids());
    w.finish();
    return loss_of(eval(dir() + "/tok"));
  }();
  return loss;
}

}  // namespace

TEST_CASE("eval: UTF-8 text is read as text", "[data_input][cli]") {
  fs::write_file_atomic(dir() + "/plain.txt", text_of(ids()));
  // The byte-level tokenizer (the fixture has no tokenizer.json): the text's bytes are the token file's ids.
  CHECK(loss_of(eval(dir() + "/plain.txt", "--tokenizer byte")) == token_file_loss());
}

TEST_CASE("eval: a file with a NUL byte or invalid UTF-8 is refused", "[data_input][cli]") {
  const std::string nul = dir() + "/ids.bin", bad = dir() + "/latin1.txt";
  fs::write_file_atomic(nul, raw<uint32_t>(ids()));  // what nanoGPT-style scripts write
  refused(eval(nul), nul, "NUL byte at offset 1");
  fs::write_file_atomic(bad, "CAF\xC9 AU LAIT\n");  // Latin-1, not UTF-8
  refused(eval(bad), bad, "invalid UTF-8 at byte offset 3");
  auto r = eval(bad);
  CHECK(r.output.find("accepted: token files") != std::string::npos);
  CHECK(r.output.find("--data-format") != std::string::npos);
}

TEST_CASE("eval: raw ids are read with --data-format u16/u32/u64/i32/i64, vocabulary checked", "[data_input][cli]") {
  const double want = token_file_loss();
  fs::write_file_atomic(dir() + "/ids.u16", raw<uint16_t>(ids()));
  fs::write_file_atomic(dir() + "/ids.u32", raw<uint32_t>(ids()));
  fs::write_file_atomic(dir() + "/ids.i64", raw<uint64_t>(ids()));
  CHECK(loss_of(eval(dir() + "/ids.u16", "--data-format u16")) == want);
  CHECK(loss_of(eval(dir() + "/ids.u32", "--data-format u32")) == want);
  CHECK(loss_of(eval(dir() + "/ids.u32", "--data-format i32")) == want);
  CHECK(loss_of(eval(dir() + "/ids.i64", "--data-format i64")) == want);
  // The wrong width reads other ids: here 0x00410041-like values far outside the vocabulary.
  refused(eval(dir() + "/ids.u16", "--data-format u32"), "ids.u16", "not below the model's vocabulary size 97");
  std::vector<uint32_t> over = ids();
  over[150] = 97;
  fs::write_file_atomic(dir() + "/over.u16", raw<uint16_t>(over));
  refused(eval(dir() + "/over.u16", "--data-format u16"), "over.u16", "id 150 is 97, not below the model's vocabulary size 97");
  fs::write_file_atomic(dir() + "/odd.u16", raw<uint16_t>(ids()) + "x");
  refused(eval(dir() + "/odd.u16", "--data-format u16"), "odd.u16", "not a whole number of uint16 ids");
  refused(eval(dir() + "/ids.u16", "--data-format u12"), "u12", "--data-format must be one of");
}

TEST_CASE("eval and score read Megatron datasets and .npy arrays in place of token files", "[data_input][cli]") {
  const std::string formats = test::fixtures_dir() + "/data_formats";
  // mg_mod97: the reference corpus' paragraphs, bytes folded below 97, written by the independent Python writer;
  // a token file of the same ids written here must give the same loss.
  TokenFileMetadata meta;
  meta.tokenizer_kind = "byte_level";
  meta.vocab_size = 97;
  TokenFileWriter w(dir() + "/mod97", meta);
  const std::string corpus = fs::read_file(formats + "/corpus.txt");
  for (std::string_view para : split_paragraphs(corpus)) {
    std::vector<uint32_t> doc;
    for (char c : para) doc.push_back(uint32_t(uint8_t(c)) % 97);
    w.add_document(doc);
  }
  w.finish();
  const double want = loss_of(eval(dir() + "/mod97", "--max-tokens 4096"));
  CHECK(loss_of(eval(formats + "/mg_mod97", "--max-tokens 4096")) == want);
  CHECK(loss_of(eval(formats + "/mg_mod97.bin", "--max-tokens 4096 --data-format megatron")) == want);
  auto r = test::run_command(test::minipuzzle_binary() + " score " + model() + " --calib " + formats +
                             "/mg_mod97.idx --samples 2 --seq-len 32 --no-depth --device cpu -o " + dir() + "/scores.json");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  // npy arrays of the unfolded corpus hold bytes >= 97: refused by the vocabulary check, naming the id.
  refused(eval(formats + "/npy_leu2.npy"), "npy_leu2.npy", "not below the model's vocabulary size 97");
}

TEST_CASE("data --next-line-task: a deterministic next-line task from a token file's documents", "[data_input][cli]") {
  std::string text;
  for (int p = 0; p < 30; ++p) {
    for (int l = 0; l < 4; ++l)
      text += "Paragraph " + std::to_string(p) + " line " + std::to_string(l) + " says something about ravens\n";
    text += "\n";
  }
  fs::write_file_atomic(dir() + "/lines.txt", text);
  const std::string bin = test::minipuzzle_binary();
  auto made = test::run_command(bin + " data " + dir() + "/lines.txt --tokenizer byte -o " + dir() + "/lines");
  INFO(made.output);
  REQUIRE(made.exit_code == 0);
  for (const char* out : {"/task1.jsonl", "/task2.jsonl"}) {
    auto r = test::run_command(bin + " data --next-line-task " + dir() + "/lines --questions 10 --fewshot 2 -o " +
                               dir() + out);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
  }
  const std::string task = fs::read_file(dir() + "/task1.jsonl");
  CHECK(task == fs::read_file(dir() + "/task2.jsonl"));  // deterministic
  size_t rows = 0, shots = 0;
  for (size_t pos = 0; pos < task.size(); ++rows) {
    const size_t end = task.find('\n', pos);
    const json row = json::parse(task.substr(pos, end - pos));
    pos = end + 1;
    shots += row.value("fewshot", false);
    const auto choices = row.at("choices").get<std::vector<std::string>>();
    REQUIRE(choices.size() == 4);
    const std::string context = row.at("context").get<std::string>(), right = choices.at(row.at("answer").get<size_t>());
    // The right choice is the line after the context's two lines in the source; the others come from other
    // paragraphs ("Paragraph P" differs).
    CHECK(text.find(context + right + "\n") != std::string::npos);
    const std::string para = context.substr(0, context.find(" line "));
    for (const std::string& c : choices)
      if (c != right) CHECK(c.rfind(para + " ", 0) == std::string::npos);
  }
  CHECK(rows == 12);
  CHECK(shots == 2);
  // Files and --next-line-task together, or neither, are bad command lines.
  CHECK(test::run_command(bin + " data --next-line-task " + dir() + "/lines " + dir() + "/lines.txt -o x").exit_code == 2);
  CHECK(test::run_command(bin + " data -o x").exit_code == 2);
}
