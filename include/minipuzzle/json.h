// JSON reading for files from outside (config.json, scores, targets, recipes): nlohmann::json, made lenient
// where Python's json module and transformers are: bare Infinity / -Infinity / NaN, and transformers'
// {"__float__": "Infinity"} encoding, are accepted and become doubles.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace mp {

using json = nlohmann::json;

// Limit on outside input: deeper nesting is refused before parsing (copying, printing and walking a json are
// recursive, so a file of a million '[' would otherwise overflow the stack).
constexpr int64_t kMaxJsonDepth = 512;
// read_json_file refuses larger files (the largest real ones, tokenizer.json and search reports, are < 100 MB).
constexpr uint64_t kMaxJsonFileBytes = 1ull << 30;
// Throws mp::Error when `text` nests arrays/objects deeper than kMaxJsonDepth (parse_json_lenient calls it).
void check_json_nesting(const std::string& text, const std::string& what);

// Parses text; `what` names the source in error messages. Throws mp::Error on malformed input.
json parse_json_lenient(const std::string& text, const std::string& what);
json read_json_file(const std::string& path);
// Writes atomically (temporary file in the same directory, then rename).
void write_json_file(const std::string& path, const json& value, int indent = 2);

// A number field that may be a number, a bare Infinity/NaN (already converted) or {"__float__": "..."}.
double json_to_double(const json& value, const std::string& what);

}  // namespace mp
