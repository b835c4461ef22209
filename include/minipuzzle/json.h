// JSON reading for files from outside (config.json, scores, targets, recipes): nlohmann::json, made lenient
// where Python's json module and transformers are: bare Infinity / -Infinity / NaN, and transformers'
// {"__float__": "Infinity"} encoding, are accepted and become doubles.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace mp {

using json = nlohmann::json;

// Parses text; `what` names the source in error messages. Throws mp::Error on malformed input.
json parse_json_lenient(const std::string& text, const std::string& what);
json read_json_file(const std::string& path);
// Writes atomically (temporary file in the same directory, then rename).
void write_json_file(const std::string& path, const json& value, int indent = 2);

// A number field that may be a number, a bare Infinity/NaN (already converted) or {"__float__": "..."}.
double json_to_double(const json& value, const std::string& what);

}  // namespace mp
