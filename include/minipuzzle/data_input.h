// The one reader of `--data`, `--calib` and `--valid` arguments (eval, score, search, distill, pipeline stages).
//
// A data argument names one of:
//   - a token file from `minipuzzle data` (NAME, NAME.tokens, NAME.index or NAME.json);
//   - a Megatron-LM / NeMo indexed dataset (PREFIX, PREFIX.bin or PREFIX.idx: the MMIDIDX index of version 1
//     and its data file; every dtype code of the format, 1 uint8 .. 8 uint16; floats must hold whole numbers);
//     its documents (the index's document_indices over its sequences) become our documents;
//   - a NumPy .npy file holding a 1-D array of integers (u1/u2/u4/u8/i1/i2/i4/i8, either byte order), one document;
//   - a UTF-8 text file, encoded with the tokenizer as one document. A file that holds a NUL byte or is not
//     valid UTF-8 is refused: it is almost surely ids or other binary data, and reading its bytes as text gives a
//     perplexity of nothing;
//   - raw little-endian ids without a header (nanoGPT's train.bin, ids written by numpy.tofile) - only when the
//     user names the width with `--data-format u16|u32|u64|i32|i64`, since bytes alone cannot say it;
//   - a weighted blend, Megatron's `--data-path` form: "W1 SRC1 W2 SRC2 ..." (weights > 0, any of the sources
//     above; paths without spaces). The weights are normalised to sum 1. The blend holds as many tokens as its
//     sources together; it takes whole documents, each time from the source furthest below its share of the
//     tokens taken so far (Megatron's greedy blending rule, over tokens), restarting a source from its first
//     document when it runs out. Deterministic; the blend is built in memory.
// Every id is checked against the model's vocabulary: for token files their vocab_size, for the other kinds
// each id, so a model can index its embedding without checks.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "minipuzzle/token_file.h"

namespace mp {

class Tokenizer;

struct DataInputOptions {
  // auto | tokens | megatron | npy | text | u16 | u32 | u64 | i32 | i64. auto tells the first four and text
  // apart by their files and contents; raw ids are only read when named.
  std::string format = "auto";
  // Text is encoded with it (null: byte-level); a token file must have been made with it (when not null).
  const Tokenizer* tokenizer = nullptr;
  // The model's vocabulary size; 0 when unknown (then Megatron, .npy and raw ids are refused: they carry none).
  uint64_t vocab_size = 0;
  // Names the argument in messages ("--data", "--calib", ...).
  std::string option = "--data";
};

// Reads `spec` as documented above. Throws mp::Error with one line naming the file, what is wrong and the
// formats accepted.
TokenFile open_data(const std::string& spec, const DataInputOptions& options);

// The tokenizer for text data: `explicit_path` (a tokenizer.json or its directory; "byte": byte-level), else
// the tokenizer.json of the first of `directories` that holds one, else byte-level. Byte-level is null.
std::unique_ptr<Tokenizer> tokenizer_for_data(const std::string& explicit_path,
                                              const std::vector<std::string>& directories);
// "a/b/c.json" -> "a/b" ("" -> "", "c" -> ".").
std::string parent_directory(const std::string& path);

// The formats accepted, for help texts and error messages.
std::string data_formats_help();
// True for the names DataInputOptions::format accepts.
bool is_data_format(const std::string& format);

// ---- A multiple-choice task made from a corpus (docs/TASKS.md's schema) ----
// "Which line comes next?": from the documents of a token file (usually the held-out split), each question's
// context is two consecutive lines of a document and its right answer the line that follows; the wrong choices
// are lines of other documents. Lines qualify when they are 20-100 bytes of UTF-8 text with at least 8 letters
// (headings' underlines and code fragments drop out). Deterministic for a seed: candidates and distractors are
// drawn by splitmix64, the right answer's slot too. The first `fewshot` questions are marked "fewshot": true.
struct NextLineTaskOptions {
  int64_t questions = 64, fewshot = 1, choices = 4;
  uint64_t seed = 1;
};
// The JSONL text. `tokenizer` decodes the ids (null: the byte-level tokenizer).
std::string make_next_line_task(const TokenFile& file, const Tokenizer* tokenizer, const NextLineTaskOptions& options);

// ---- Megatron indexed dataset index (PREFIX.idx), exposed for the fuzz target and tests ----
struct MegatronIndex {
  int dtype_code = 0;        // 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16
  int item_size = 0;         // bytes per id
  std::vector<int32_t> sequence_lengths;    // ids per sequence
  std::vector<int64_t> sequence_pointers;   // byte offset of each sequence in PREFIX.bin
  std::vector<int64_t> document_indices;    // sequence index where each document starts; last = sequence count
  bool has_modes = false;                   // multimodal: one int8 mode per sequence follows (ignored)
};
// Validates the index bytes alone and against the data file's size: magic, version, dtype code, counts that
// fit the file, non-negative lengths, sequences inside the data file, document indices from 0 to the
// sequence count, non-decreasing.
MegatronIndex parse_megatron_index(const uint8_t* data, uint64_t size, uint64_t bin_size, const std::string& what);

// ---- NumPy .npy header, exposed for the fuzz target and tests ----
struct NpyHeader {
  char kind = 0;              // 'u' or 'i'
  int item_size = 0;          // 1, 2, 4 or 8
  bool big_endian = false;
  uint64_t count = 0;         // elements
  uint64_t data_offset = 0;   // where the array starts
};
// Parses the magic, version (1.0, 2.0, 3.0) and the header dict ({'descr': ..., 'fortran_order': ...,
// 'shape': (N,)}) of a .npy file of `file_size` bytes given its first bytes; checks the data fits the file.
NpyHeader parse_npy_header(const uint8_t* data, uint64_t size, uint64_t file_size, const std::string& what);

}  // namespace mp
