// scores.json: reading, writing and the checks (shape fingerprint, every width) that tie a scores file to one model.
#include <functional>
#include <sstream>

#include "minipuzzle/error.h"
#include "minipuzzle/scores.h"

namespace mp {

Reduction parse_reduction(const std::string& name) {
  if (name == "mean_l2") return Reduction::MeanL2;
  if (name == "mean") return Reduction::Mean;
  if (name == "l2") return Reduction::L2;
  if (name == "variance") return Reduction::Variance;
  fail("unknown reduction \"", name, "\" (expected mean_l2, mean, l2 or variance)");
}

const char* reduction_name(Reduction r) {
  switch (r) {
    case Reduction::MeanL2: return "mean_l2";
    case Reduction::Mean: return "mean";
    case Reduction::L2: return "l2";
    case Reduction::Variance: return "variance";
  }
  return "?";
}

std::string shape_fingerprint(const ModelConfig& c) {
  std::ostringstream os;
  os << c.pattern() << "|v" << c.vocab_size << "|h" << c.hidden_size << "|f" << c.intermediate_size << "|a"
     << c.num_attention_heads << "/" << c.num_key_value_heads << "x" << c.head_dim << "|m" << c.mamba_num_heads
     << "x" << c.mamba_head_dim << "g" << c.n_groups << "n" << c.ssm_state_size;
  if (c.count(LayerType::Moe))
    os << "|e" << c.n_routed_experts << "k" << c.num_experts_per_tok << "x" << c.moe_intermediate_size << "s"
       << c.moe_shared_expert_intermediate_size << "l" << c.moe_latent_size;
  return os.str();
}

namespace {
json vec(const std::vector<double>& v) { return json(v); }
// Integers from the file: nlohmann's get<int64_t>() of a float (or of an unsigned above 2^63) is an unchecked
// conversion, undefined for large floats, so the type and range are checked first.
int64_t int_value(const json& v, const std::string& what) {
  MP_CHECK(v.is_number_integer() && (!v.is_number_unsigned() || v.get<uint64_t>() <= uint64_t(INT64_MAX)), what,
           ": expected an integer, found ", v.dump().substr(0, 80));
  return v.get<int64_t>();
}
std::vector<int64_t> int_list(const json& v, const std::string& what) {
  MP_CHECK(v.is_array(), what, ": expected a list of integers");
  std::vector<int64_t> out;
  for (auto& x : v) out.push_back(int_value(x, what));
  return out;
}

void check_size(const std::vector<double>& v, int64_t expect, const std::string& what, const std::string& field) {
  MP_CHECK(v.empty() || static_cast<int64_t>(v.size()) == expect, what, ": ", field, " has ", v.size(),
           " scores but this model has ", expect,
           " (the scores were computed on another model; re-run `minipuzzle score` on this checkpoint)");
}

std::vector<double> dvec(const json& j, const char* key) {
  if (!j.contains(key)) return {};
  std::vector<double> out;
  for (auto& x : j.at(key)) out.push_back(json_to_double(x, key));
  return out;
}
}  // namespace

json Scores::to_json() const {
  json j{{"format", "minipuzzle-scores"}, {"version", 1}, {"model", model}, {"calibration", calibration},
         {"reduction", reduction_name(reduction)}};
  j["model"]["fingerprint"] = fingerprint;
  j["model"]["pattern"] = pattern;
  if (!hidden.empty()) j["hidden"] = {{"scores", vec(hidden)}};
  json layers_j = json::array();
  for (auto& l : layers) {
    json e{{"index", l.index}, {"type", layer_type_name(l.type)}};
    if (!l.depth.by_criterion.empty()) e["depth"] = l.depth.by_criterion;
    if (!l.mlp_neurons.empty()) e["mlp"] = {{"neurons", vec(l.mlp_neurons)}};
    if (!l.attn_heads.empty())
      e["attention"] = {{"heads", vec(l.attn_heads)}, {"heads_out", vec(l.attn_heads_out)}, {"kv_groups", vec(l.attn_kv_groups)}};
    if (!l.mamba.heads.empty()) {
      const MambaScores& m = l.mamba;
      json mj{{"heads", vec(m.heads)}, {"head_dim", vec(m.head_dim)}, {"groups", vec(m.groups)},
              {"head_rank_in_group", m.head_rank_in_group}, {"channels", vec(m.channels)}};
      if (!m.heads_out.empty()) mj["heads_out"] = vec(m.heads_out);
      if (!m.heads_flap.empty()) mj["heads_flap"] = vec(m.heads_flap);
      if (!m.heads_nested.empty()) mj["heads_nested"] = vec(m.heads_nested);
      e["mamba"] = mj;
    }
    if (!l.taylor.empty()) e["taylor"] = l.taylor;
    if (!l.moe.experts.empty() || !l.moe.shared.empty()) {
      json mj = json::object();
      for (auto [k, v] : {std::pair<const char*, const std::vector<double>*>{"experts", &l.moe.experts},
                          {"frequency", &l.moe.frequency}, {"loss", &l.moe.loss},
                          {"expert_channels", &l.moe.expert_channels}, {"shared", &l.moe.shared}})
        if (!v->empty()) mj[k] = vec(*v);
      e["moe"] = mj;
    }
    layers_j.push_back(e);
  }
  j["layers"] = layers_j;
  if (!blocks.empty()) {
    json b = json::array();
    for (auto& blk : blocks) {
      json e = blk.by_criterion;
      e["start"] = blk.start;
      b.push_back(e);
    }
    j["depth_blocks"] = {{"k", block_k}, {"blocks", b}};
  }
  if (!removal_order.empty())
    j["iterative_removal"] = {{"criterion", removal_criterion}, {"order", removal_order}, {"scores", removal_scores}};
  return j;
}

Scores Scores::from_json(const json& j, const std::string& what) {
  MP_CHECK(j.is_object() && j.contains("format") && j.at("format") == "minipuzzle-scores", what,
           ": not a minipuzzle scores file (missing \"format\": \"minipuzzle-scores\")");
  MP_CHECK(j.contains("version") && j.at("version") == 1, what, ": unsupported scores version ",
           j.contains("version") ? j.at("version").dump() : std::string("(none)"));
  Scores s;
  try {
    s.model = j.at("model");
    s.fingerprint = s.model.at("fingerprint").get<std::string>();
    s.pattern = s.model.at("pattern").get<std::string>();
    s.calibration = j.value("calibration", json::object());
    s.reduction = parse_reduction(j.value("reduction", "mean_l2"));
    if (j.contains("hidden")) s.hidden = dvec(j.at("hidden"), "scores");
    for (auto& e : j.at("layers")) {
      LayerScores l;
      l.index = int_value(e.at("index"), what + " layer index");
      std::string type = e.at("type").get<std::string>();
      l.type = type == "mamba" ? LayerType::Mamba : type == "attention" ? LayerType::Attention
             : type == "moe"     ? LayerType::Moe
                                 : LayerType::Mlp;
      if (e.contains("depth"))
        for (auto& [k, v] : e.at("depth").items()) l.depth.by_criterion[k] = json_to_double(v, k);
      if (e.contains("mlp")) l.mlp_neurons = dvec(e.at("mlp"), "neurons");
      if (e.contains("attention")) {
        l.attn_heads = dvec(e.at("attention"), "heads");
        l.attn_kv_groups = dvec(e.at("attention"), "kv_groups");
        l.attn_heads_out = dvec(e.at("attention"), "heads_out");
      }
      if (e.contains("mamba")) {
        const json& m = e.at("mamba");
        l.mamba.heads = dvec(m, "heads");
        l.mamba.heads_out = dvec(m, "heads_out");
        l.mamba.heads_flap = dvec(m, "heads_flap");
        l.mamba.head_dim = dvec(m, "head_dim");
        l.mamba.heads_nested = dvec(m, "heads_nested");
        l.mamba.groups = dvec(m, "groups");
        l.mamba.channels = dvec(m, "channels");
        if (m.contains("head_rank_in_group")) {
          MP_CHECK(m.at("head_rank_in_group").is_array(), what, ": head_rank_in_group must be a list of lists");
          for (auto& g : m.at("head_rank_in_group")) l.mamba.head_rank_in_group.push_back(int_list(g, what + " head_rank_in_group"));
        }
      }
      if (e.contains("moe")) {
        const json& m = e.at("moe");
        l.moe.experts = dvec(m, "experts");
        l.moe.frequency = dvec(m, "frequency");
        l.moe.loss = dvec(m, "loss");
        l.moe.expert_channels = dvec(m, "expert_channels");
        l.moe.shared = dvec(m, "shared");
      }
      if (e.contains("taylor"))
        for (auto& [k, v] : e.at("taylor").items()) l.taylor[k] = v.get<std::vector<double>>();
      s.layers.push_back(std::move(l));
    }
    if (j.contains("depth_blocks")) {
      s.block_k = int_value(j.at("depth_blocks").at("k"), what + " depth_blocks.k");
      for (auto& e : j["depth_blocks"].at("blocks")) {
        BlockScore b;
        b.start = int_value(e.at("start"), what + " depth_blocks start");
        for (auto& [k, v] : e.items())
          if (k != "start") b.by_criterion[k] = json_to_double(v, k);
        s.blocks.push_back(b);
      }
    }
    if (j.contains("iterative_removal")) {
      s.removal_criterion = j["iterative_removal"].at("criterion").get<std::string>();
      s.removal_order = int_list(j.at("iterative_removal").at("order"), what + " iterative_removal.order");
      s.removal_scores = j["iterative_removal"].at("scores").get<std::vector<double>>();
    }
  } catch (const json::exception& e) {
    fail(what, ": malformed scores file (", e.what(), ")");
  }
  return s;
}

void Scores::check_matches(const ModelConfig& config, const std::string& what) const {
  MP_CHECK(fingerprint == shape_fingerprint(config), what, ": these scores were computed on another model (",
           fingerprint, ") than this checkpoint (", shape_fingerprint(config), "); run `minipuzzle score` on it");
}

void check_scores_fit(const Scores& sc, const ModelConfig& c, const std::string& what) {
  MP_CHECK(sc.pattern.empty() || sc.pattern == c.pattern(), what, ": the scores were computed on a model with pattern ",
           sc.pattern, " but this checkpoint's is ", c.pattern(), " (the scores belong to another model; re-run `minipuzzle score` on this checkpoint)");
  MP_CHECK(static_cast<int64_t>(sc.layers.size()) == c.num_layers(), what, ": the scores describe ", sc.layers.size(),
           " layers but this checkpoint has ", c.num_layers(), "; re-run `minipuzzle score` on this checkpoint");
  check_size(sc.hidden, c.hidden_size, what, "hidden");
  for (size_t i = 0; i < sc.layers.size(); ++i) {
    const LayerScores& l = sc.layers[i];
    const std::string layer = "layer " + std::to_string(i);
    MP_CHECK(l.type == c.layers[i], what, ": ", layer, " is a ", layer_type_name(l.type),
             " layer in the scores but a ", layer_type_name(c.layers[i]),
             " layer in this checkpoint; the scores belong to another model");
    check_size(l.mlp_neurons, c.intermediate_size, what, layer + " mlp.neurons");
    check_size(l.attn_heads, c.num_attention_heads, what, layer + " attention.heads");
    check_size(l.attn_kv_groups, c.num_key_value_heads, what, layer + " attention.kv_groups");
    for (auto* v : {&l.mamba.heads, &l.mamba.heads_out, &l.mamba.heads_flap, &l.mamba.heads_nested})
      check_size(*v, c.mamba_num_heads, what, layer + " mamba.heads");
    check_size(l.mamba.head_dim, c.mamba_head_dim, what, layer + " mamba.head_dim");
    check_size(l.mamba.groups, c.n_groups, what, layer + " mamba.groups");
    check_size(l.mamba.channels, c.mamba_d_inner(), what, layer + " mamba.channels");
    for (auto* v : {&l.moe.experts, &l.moe.frequency, &l.moe.loss})
      check_size(*v, c.n_routed_experts, what, layer + " moe.experts");
    check_size(l.moe.expert_channels, c.n_routed_experts * c.moe_intermediate_size, what, layer + " moe.expert_channels");
    check_size(l.moe.shared, c.moe_shared_expert_intermediate_size, what, layer + " moe.shared");
  }
  if (!sc.fingerprint.empty()) sc.check_matches(c, what);
}

Scores read_scores(const std::string& path) { return Scores::from_json(read_json_file(path), path); }
void write_scores(const std::string& path, const Scores& scores) { write_json_file(path, scores.to_json(), 1); }

}  // namespace mp
