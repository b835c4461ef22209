// Lenient JSON: Python writes bare Infinity/NaN and transformers writes {"__float__": "Infinity"}; strict
// parsers reject the first and misread the second, so both are normalised to doubles here.
#include "minipuzzle/json.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"

namespace mp {

// Replaces bare Infinity / -Infinity / NaN tokens (outside strings) by {"__float__": "..."} objects.
static std::string quote_bare_floats(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    auto starts = [&](const char* word) { return text.compare(i, std::char_traits<char>::length(word), word) == 0; };
    if (starts("-Infinity")) {
      out += "{\"__float__\":\"-Infinity\"}";
      i += 8;
    } else if (starts("Infinity")) {
      out += "{\"__float__\":\"Infinity\"}";
      i += 7;
    } else if (starts("NaN")) {
      out += "{\"__float__\":\"NaN\"}";
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

static bool is_float_box(const json& v) { return v.is_object() && v.size() == 1 && v.contains("__float__"); }

static double unbox_float(const json& v, const std::string& what) {
  const json& s = v.at("__float__");
  if (s.is_number()) return s.get<double>();
  MP_CHECK(s.is_string(), what, ": {\"__float__\": ...} must hold a string or number");
  std::string t = s.get<std::string>();
  if (t == "Infinity" || t == "inf") return std::numeric_limits<double>::infinity();
  if (t == "-Infinity" || t == "-inf") return -std::numeric_limits<double>::infinity();
  if (t == "NaN" || t == "nan") return std::numeric_limits<double>::quiet_NaN();
  try {
    return std::stod(t);
  } catch (...) {
    fail(what, ": cannot read \"", t, "\" as a number");
  }
}

static void unbox_all(json& v, const std::string& what) {
  if (is_float_box(v)) {
    v = unbox_float(v, what);
  } else if (v.is_object() || v.is_array()) {
    for (auto& child : v) unbox_all(child, what);
  }
}

void check_json_nesting(const std::string& text, const std::string& what) {
  int64_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      MP_CHECK(++depth <= kMaxJsonDepth, what, ": JSON nested deeper than ", kMaxJsonDepth,
               " levels (at byte ", i, "); no minipuzzle file needs that, so the file is refused as corrupt");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

json parse_json_lenient(const std::string& text, const std::string& what) {
  check_json_nesting(text, what);
  // Parsing with exceptions on gives the position of the error. Not only parse_error: a number beyond the
  // double range (1e999) is an out_of_range exception, thrown even when exceptions are off.
  json j;
  try {
    j = json::parse(quote_bare_floats(text));
  } catch (const json::exception& e) {
    fail(what, ": malformed JSON (", e.what(), ")");
  }
  unbox_all(j, what);
  return j;
}

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MP_CHECK(in.good(), path, ": cannot open for reading (does it exist?)");
  in.seekg(0, std::ios::end);
  const auto size = static_cast<int64_t>(in.tellg());
  MP_CHECK(size >= 0 && static_cast<uint64_t>(size) <= kMaxJsonFileBytes, path, ": ", size,
           " bytes is over the limit of ", kMaxJsonFileBytes, " bytes for a JSON file (not a minipuzzle JSON file?)");
  in.seekg(0, std::ios::beg);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_json_lenient(ss.str(), path);
}

// Non-finite doubles are written as transformers writes them ({"__float__": "Infinity"}); plain JSON has no
// spelling for them and nlohmann would write null.
static json box_non_finite(const json& v) {
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isnan(d)) return json{{"__float__", "NaN"}};
    if (std::isinf(d)) return json{{"__float__", d > 0 ? "Infinity" : "-Infinity"}};
    return v;
  }
  if (v.is_array()) {
    json out = json::array();
    for (auto& x : v) out.push_back(box_non_finite(x));
    return out;
  }
  if (v.is_object()) {
    json out = json::object();
    for (auto& [k, x] : v.items()) out[k] = box_non_finite(x);
    return out;
  }
  return v;
}

void write_json_file(const std::string& path, const json& value, int indent) {
  fs::write_file_atomic(path, box_non_finite(value).dump(indent) + "\n");
}

double json_to_double(const json& value, const std::string& what) {
  if (value.is_number()) return value.get<double>();
  if (is_float_box(value)) return unbox_float(value, what);
  fail(what, ": expected a number, found ", value.dump());
}

}  // namespace mp
