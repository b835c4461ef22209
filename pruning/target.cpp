// TARGET as given to `minipuzzle prune`: inline JSON, a file, or a candidate looked up by id in a search report
// (REPORT.json#id). Every form is read by PruneTarget::from_json (minipuzzle/prune_target.h).
#include <fstream>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/pruning.h"


namespace mp {

static std::string read_text(const std::string& path) {
  std::ifstream f(path);
  MP_CHECK(f.good(), path, ": cannot read the target file");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

static const json* find_candidate(const json& report, const std::string& id) {
  auto matches = [&](const json& c) { return c.is_object() && c.contains("id") && c.at("id") == id; };
  if (report.contains("candidates") && report.at("candidates").is_array())
    for (auto& c : report.at("candidates"))
      if (matches(c)) return &c;
  if (report.contains("parent") && matches(report.at("parent"))) return &report.at("parent");
  if (report.contains("references") && report.at("references").is_array())
    for (auto& r : report.at("references")) {
      if (!r.contains("candidate")) continue;
      if (matches(r.at("candidate")) || (r.contains("name") && r.at("name") == id)) return &r.at("candidate");
    }
  return nullptr;
}

PruneTarget load_target(const std::string& text) {
  std::string trimmed = text;
  trimmed.erase(0, trimmed.find_first_not_of(" \t\n"));
  if (!trimmed.empty() && trimmed[0] == '{') return PruneTarget::from_json(parse_json_lenient(trimmed, "--target"), "--target");
  auto hash = text.rfind('#');
  if (hash != std::string::npos && !fs::exists(text)) {
    std::string path = text.substr(0, hash), id = text.substr(hash + 1);
    MP_CHECK(!id.empty(), text, ": expected REPORT.json#<candidate id>");
    json report = parse_json_lenient(read_text(path), path);
    const json* c = find_candidate(report, id);
    if (!c) {
      std::string some;
      if (report.contains("candidates") && report.at("candidates").is_array()) {
        int n = 0;
        for (auto& e : report.at("candidates")) {
          if (n++ == 5) break;
          if (e.contains("id")) some += (some.empty() ? "" : ", ") + e.at("id").get<std::string>();
        }
      }
      fail(path, ": no candidate with id \"", id, "\" in this search report",
           some.empty() ? std::string() : " (first ids: " + some + ")");
    }
    return PruneTarget::from_json(*c, path + "#" + id);
  }
  return PruneTarget::from_json(parse_json_lenient(read_text(text), text), text);
}

}  // namespace mp
