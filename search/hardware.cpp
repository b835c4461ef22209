// Hardware profiles (configs/hardware/*.json), dtypes, reservations and the memory budget.
#include <dirent.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "minipuzzle/error.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/search.h"

#ifndef MINIPUZZLE_CONFIG_DIR
#define MINIPUZZLE_CONFIG_DIR ""
#endif


namespace mp::search {

double dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4.0;
    case DType::BF16: return 2.0;
    case DType::F16: return 2.0;
    case DType::FP8: return 1.0;
    case DType::FP4: return 0.5;
  }
  return 2.0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::FP8: return "fp8";
    case DType::FP4: return "fp4";
  }
  return "?";
}

static std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

DType parse_dtype(const std::string& text) {
  std::string t = lower(text);
  if (t == "float32" || t == "fp32" || t == "f32") return DType::F32;
  if (t == "bfloat16" || t == "bf16") return DType::BF16;
  if (t == "float16" || t == "fp16" || t == "f16" || t == "half") return DType::F16;
  if (t == "fp8" || t == "float8" || t == "e4m3" || t == "float8_e4m3fn" || t == "f8") return DType::FP8;
  if (t == "fp4" || t == "nvfp4" || t == "mxfp4" || t == "float4" || t == "f4") return DType::FP4;
  fail("unknown dtype \"", text, "\"; expected one of float32, bfloat16, float16, fp8, fp4");
}

double HardwareProfile::peak_flops(DType compute) const {
  if (compute == DType::FP4 && fp4_flops > 0) return fp4_flops;
  if ((compute == DType::FP4 || compute == DType::FP8) && fp8_flops > 0) return fp8_flops;
  return bf16_flops;
}

json Efficiency::to_json() const {
  return {{"bandwidth_factor", bandwidth_factor},
          {"cache_factor", cache_factor},
          {"state_factor", state_factor},
          {"grouped_kv_factor", grouped_kv_factor},
          {"grouped_position_ns", grouped_position_s * 1e9},
          {"compute_factor", compute_factor},
          {"attention_factor", attention_factor},
          {"scan_factor", scan_factor},
          {"mamba_layer_us", mamba_layer_s * 1e6},
          {"attention_layer_us", attention_layer_s * 1e6},
          {"mlp_layer_us", mlp_layer_s * 1e6},
          {"step_us", step_s * 1e6},
          {"calibrated", calibrated},
          {"note", calibration_note}};
}

Efficiency Efficiency::from_json(const json& e, const std::string& what, Efficiency out) {
  MP_CHECK(e.is_object(), what, ": efficiency must be an object");
  auto read = [&](const char* key, double& field, double scale) {
    if (e.contains(key)) field = json_to_double(e.at(key), what + " efficiency " + key) * scale;
  };
  // The combined fields first: they set every term of their kind; the per-term fields refine them.
  if (e.contains("bandwidth_factor"))
    read("bandwidth_factor", out.bandwidth_factor, 1), out.cache_factor = out.state_factor = out.bandwidth_factor;
  if (e.contains("compute_factor"))
    read("compute_factor", out.compute_factor, 1), out.attention_factor = out.scan_factor = out.compute_factor;
  if (e.contains("layer_overhead_us")) {
    read("layer_overhead_us", out.mamba_layer_s, 1e-6);
    out.attention_layer_s = out.mlp_layer_s = out.mamba_layer_s;
  }
  // Profiles from before the state term had one cache factor for the KV cache and the Mamba state.
  if (e.contains("cache_factor")) read("cache_factor", out.cache_factor, 1), out.state_factor = out.cache_factor;
  read("state_factor", out.state_factor, 1);
  read("grouped_kv_factor", out.grouped_kv_factor, 1);
  read("grouped_position_ns", out.grouped_position_s, 1e-9);
  read("attention_factor", out.attention_factor, 1);
  read("scan_factor", out.scan_factor, 1);
  read("mamba_layer_us", out.mamba_layer_s, 1e-6);
  read("attention_layer_us", out.attention_layer_s, 1e-6);
  read("mlp_layer_us", out.mlp_layer_s, 1e-6);
  read("step_us", out.step_s, 1e-6);
  out.calibrated = e.value("calibrated", false);
  out.calibration_note = e.value("note", std::string());
  for (double v : {out.bandwidth_factor, out.cache_factor, out.state_factor, out.grouped_kv_factor,
                   out.grouped_position_s, out.compute_factor, out.attention_factor, out.scan_factor,
                   out.mamba_layer_s, out.attention_layer_s, out.mlp_layer_s, out.step_s})
    MP_CHECK(v >= 0 && std::isfinite(v), what, ": efficiency coefficients must be finite and not negative");
  return out;
}

json HardwareProfile::to_json() const {
  json r = json::array();
  for (auto& x : reservations) {
    json e{{"name", x.name}};
    if (x.fraction > 0) e["fraction"] = x.fraction;
    if (x.bytes > 0) e["gib"] = x.bytes / kGiB;
    r.push_back(e);
  }
  json j{{"name", name},
         {"description", description},
         {"memory_gib", memory_bytes / kGiB},
         {"bandwidth_gb_per_s", bandwidth_bytes_per_s / 1e9},
         {"bf16_tflops", bf16_flops / 1e12},
         {"reservations", r},
         {"efficiency", {{"decode", decode_efficiency.to_json()}, {"prefill", prefill_efficiency.to_json()}}},
         {"_source", source}};
  if (fp8_flops > 0) j["fp8_tflops"] = fp8_flops / 1e12;
  if (fp4_flops > 0) j["fp4_tflops"] = fp4_flops / 1e12;
  return j;
}

static double positive(const json& j, const char* key, const std::string& what, bool required) {
  if (!j.contains(key) || j.at(key).is_null()) {
    MP_CHECK(!required, what, ": missing field \"", key, "\"");
    return 0.0;
  }
  double v = json_to_double(j.at(key), what + " field \"" + key + "\"");
  MP_CHECK(v > 0 && std::isfinite(v), what, ": field \"", key, "\" must be a positive number, found ", j.at(key).dump());
  return v;
}

static Reservation reservation_from_json(const json& e, const std::string& what) {
  MP_CHECK(e.is_object(), what, ": each reservation must be an object like {\"name\": \"vision\", \"gib\": 1.3}");
  Reservation r;
  r.name = e.value("name", std::string("reserved"));
  if (e.contains("fraction")) r.fraction = json_to_double(e.at("fraction"), what + " reservation fraction");
  if (e.contains("percent")) r.fraction = json_to_double(e.at("percent"), what + " reservation percent") / 100.0;
  if (e.contains("gib")) r.bytes = json_to_double(e.at("gib"), what + " reservation gib") * kGiB;
  MP_CHECK(r.fraction >= 0 && r.fraction < 1 && r.bytes >= 0, what, ": reservation \"", r.name,
           "\" must have 0 <= fraction < 1 and gib >= 0");
  return r;
}

HardwareProfile HardwareProfile::from_json(const json& j, const std::string& what) {
  try {
    MP_CHECK(j.is_object(), what, ": a hardware profile must be a JSON object");
    HardwareProfile h;
    h.name = j.value("name", std::string());
    MP_CHECK(!h.name.empty(), what, ": missing field \"name\"");
    h.description = j.value("description", std::string());
    h.source = j.value("_source", std::string());
    h.memory_bytes = positive(j, "memory_gib", what, true) * kGiB;
    h.bandwidth_bytes_per_s = positive(j, "bandwidth_gb_per_s", what, true) * 1e9;
    h.bf16_flops = positive(j, "bf16_tflops", what, true) * 1e12;
    h.fp8_flops = positive(j, "fp8_tflops", what, false) * 1e12;
    h.fp4_flops = positive(j, "fp4_tflops", what, false) * 1e12;
    if (j.contains("reservations")) {
      MP_CHECK(j.at("reservations").is_array(), what, ": \"reservations\" must be a list");
      for (auto& e : j.at("reservations")) h.reservations.push_back(reservation_from_json(e, what));
    }
    if (j.contains("efficiency")) {
      // {"decode": {...}, "prefill": {...}}, or one set for both.
      const json& e = j.at("efficiency");
      if (e.contains("decode") || e.contains("prefill")) {
        if (e.contains("decode")) h.decode_efficiency = Efficiency::from_json(e.at("decode"), what, h.decode_efficiency);
        if (e.contains("prefill")) h.prefill_efficiency = Efficiency::from_json(e.at("prefill"), what, h.prefill_efficiency);
      } else {
        h.decode_efficiency = h.prefill_efficiency = Efficiency::from_json(e, what, Efficiency{});
      }
    }
    return h;
  } catch (const json::exception& e) {
    fail(what, ": malformed hardware profile (", e.what(), ")");
  }
}

std::string find_config_file(const std::string& kind, const std::string& name_or_path) {
  if (fs::exists(name_or_path) && fs::is_regular_file(name_or_path)) return name_or_path;
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("MINIPUZZLE_CONFIGS")) dirs.push_back(fs::join(env, kind));
  dirs.push_back(fs::join("configs", kind));
  if (*MINIPUZZLE_CONFIG_DIR) dirs.push_back(fs::join(MINIPUZZLE_CONFIG_DIR, kind));
  std::string file = name_or_path;
  if (fs::extension(file) != ".json") file += ".json";
  for (auto& d : dirs) {
    const std::string p = fs::join(d, file);
    if (fs::exists(p)) return p;
  }
  std::string known;
  for (auto& d : dirs) {
    if (!fs::is_directory(d)) continue;
    for (const std::string& name : fs::list_directory(d))
      if (fs::extension(name) == ".json") known += (known.empty() ? "" : ", ") + fs::stem(name);
    if (!known.empty()) break;
  }
  fail("no ", kind, " profile \"", name_or_path, "\": not a file, and not in configs/", kind,
       "/ (known: ", known.empty() ? "none found" : known, "; set MINIPUZZLE_CONFIGS to the configs directory)");
}

std::vector<std::string> list_config_files(const std::string& kind) {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("MINIPUZZLE_CONFIGS")) dirs.push_back(std::string(env) + "/" + kind);
  dirs.push_back("configs/" + kind);
  if (*MINIPUZZLE_CONFIG_DIR) dirs.push_back(std::string(MINIPUZZLE_CONFIG_DIR) + "/" + kind);
  for (auto& d : dirs) {
    std::vector<std::string> out;
    if (DIR* dir = ::opendir(d.c_str())) {
      while (const dirent* e = ::readdir(dir)) {
        const std::string name = e->d_name;
        if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0) out.push_back(d + "/" + name);
      }
      ::closedir(dir);
    }
    if (!out.empty()) {
      std::sort(out.begin(), out.end());
      return out;
    }
  }
  return {};
}

HardwareProfile load_hardware(const std::string& name_or_path) {
  std::string path = find_config_file("hardware", name_or_path);
  return HardwareProfile::from_json(read_json_file(path), path);
}

// A size with a unit: GiB/MiB/KiB (binary), GB/MB (decimal); a bare number is GiB.
static double parse_bytes(const std::string& text, const std::string& item) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    fail("reservation \"", item, "\": expected a number with a unit (e.g. 1.3GiB, 512MiB, 5%)");
  }
  std::string unit = lower(text.substr(pos));
  double scale = 0;
  if (unit.empty() || unit == "gib" || unit == "g") scale = kGiB;
  else if (unit == "mib" || unit == "m") scale = 1024.0 * 1024.0;
  else if (unit == "kib" || unit == "k") scale = 1024.0;
  else if (unit == "gb") scale = 1e9;
  else if (unit == "mb") scale = 1e6;
  else fail("reservation \"", item, "\": unknown unit \"", unit, "\" (use GiB, MiB, GB, MB or %)");
  MP_CHECK(v >= 0 && std::isfinite(v), "reservation \"", item, "\" must not be negative");
  return v * scale;
}

std::vector<std::string> comma_separated_items(const std::string& text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? text.size() + 1 : comma + 1;
    if (!item.empty()) items.push_back(std::move(item));
  }
  return items;
}

std::vector<Reservation> parse_reservations(const std::string& text) {
  std::vector<Reservation> out;
  for (const std::string& item : comma_separated_items(text)) {
    Reservation r;
    std::string value = item;
    size_t eq = item.find('=');
    if (eq != std::string::npos) r.name = item.substr(0, eq), value = item.substr(eq + 1);
    if (!value.empty() && value.back() == '%') {
      double pct = 0;
      try {
        pct = std::stod(value.substr(0, value.size() - 1));
      } catch (const std::exception&) {
        fail("reservation \"", item, "\": expected a percentage like 5%");
      }
      MP_CHECK(pct >= 0 && pct < 100, "reservation \"", item, "\": percentage must be in [0, 100)");
      r.fraction = pct / 100.0;
      if (r.name.empty()) r.name = "framework buffer";
    } else {
      r.bytes = parse_bytes(value, item);
      if (r.name.empty()) r.name = "reserved";
    }
    out.push_back(r);
  }
  return out;
}

int64_t parse_token_count(const std::string& text) {
  MP_CHECK(!text.empty(), "empty token count");
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    fail("token count \"", text, "\": expected a number like 131072, 128k or 1M");
  }
  std::string unit = lower(text.substr(pos));
  double scale = 1;
  if (unit == "k" || unit == "ki") scale = 1024;
  else if (unit == "m" || unit == "mi") scale = 1024.0 * 1024.0;
  else MP_CHECK(unit.empty(), "token count \"", text, "\": unknown suffix \"", unit, "\" (k = 1024, M = 1024^2)");
  double n = v * scale;
  MP_CHECK(n >= 1 && std::floor(n) == n, "token count \"", text, "\" must be a positive whole number");
  MP_CHECK(n < 1e12, "token count \"", text, "\" is above the supported 10^12 tokens (byte counts would overflow)");
  return static_cast<int64_t>(n);
}

double Budget::usable_bytes() const {
  if (explicit_bytes) return *explicit_bytes;
  double b = device_bytes;
  for (auto& r : reservations) b -= r.fraction * device_bytes + r.bytes;
  return b;
}

json Budget::to_json() const {
  json r = json::array();
  for (auto& x : reservations)
    r.push_back({{"name", x.name}, {"fraction", x.fraction}, {"gib", (x.fraction * device_bytes + x.bytes) / kGiB}});
  json j{{"device_gib", device_bytes / kGiB}, {"reservations", r}, {"usable_gib", usable_bytes() / kGiB}};
  if (explicit_bytes) j["explicit_gib"] = *explicit_bytes / kGiB;
  return j;
}

Budget make_budget(const HardwareProfile& hw, const std::vector<Reservation>& extra, std::optional<double> explicit_gib) {
  Budget b;
  b.device_bytes = hw.memory_bytes;
  b.reservations = hw.reservations;
  b.reservations.insert(b.reservations.end(), extra.begin(), extra.end());
  if (explicit_gib) {
    MP_CHECK(*explicit_gib > 0, "--budget-gib must be positive, found ", *explicit_gib);
    b.explicit_bytes = *explicit_gib * kGiB;
  }
  MP_CHECK(b.usable_bytes() > 0, "the reservations (", (b.device_bytes - b.usable_bytes()) / kGiB,
           " GiB) leave nothing of the ", b.device_bytes / kGiB, " GiB of ", hw.name);
  return b;
}

}  // namespace mp::search
