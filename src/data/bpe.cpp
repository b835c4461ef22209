// Byte-level BPE: a pre-token's bytes become one symbol each (the GPT-2 char standing for the byte), then
// merges are applied by rank exactly as `tokenizers` does it (a heap ordered by rank then position, stale
// entries skipped when the pair at that position no longer yields the same token). Words are cached per
// thread, since natural text repeats the same few thousand words.
#include <atomic>
#include <queue>

#include "minipuzzle/error.h"
#include "src/data/tokenizer_impl.h"

namespace mp::detail {

static std::atomic<uint64_t> g_next_instance{1};

BpeModel BpeModel::from_json(const json& model, const std::string& what) {
  MP_CHECK(model.is_object(), what, ": \"model\" must be an object");
  std::string type = model.value("type", std::string("BPE"));
  MP_CHECK(type == "BPE", what, ": model type ", json(type).dump(),
           " is not supported (minipuzzle reads byte-level BPE tokenizers; WordPiece/Unigram/WordLevel are not)");
  if (model.contains("dropout") && !model.at("dropout").is_null()) {
    double dropout = model.at("dropout").get<double>();
    MP_CHECK(dropout == 0.0, what, ": BPE dropout ", dropout,
             " is set; dropout makes encoding random (a training-time option), set it to null");
  }
  BpeModel m;
  m.instance = g_next_instance++;
  const json& vocab = model.at("vocab");
  MP_CHECK(vocab.is_object(), what, ": model.vocab must be an object {token: id}");
  uint32_t max_id = 0;
  for (auto& [token, id_json] : vocab.items()) {
    MP_CHECK(id_json.is_number_unsigned(), what, ": vocab id of ", json(token).dump(), " is not a non-negative integer");
    uint64_t id = id_json.get<uint64_t>();
    MP_CHECK(id < (1u << 31), what, ": vocab id ", id, " of ", json(token).dump(), " is too large");
    m.vocab[token] = uint32_t(id);
    max_id = std::max(max_id, uint32_t(id));
  }
  // Real vocabularies are dense; refusing very sparse ids keeps a hostile file from costing gigabytes here.
  MP_CHECK(max_id < 4 * vocab.size() + 1024, what, ": vocab ids go up to ", max_id, " for only ", vocab.size(),
           " tokens; ids must be (nearly) dense");
  m.id_to_token.assign(vocab.empty() ? 0 : size_t(max_id) + 1, std::string());
  for (auto& [token, id] : m.vocab) m.id_to_token[id] = token;

  auto str_or_empty = [&](const char* key) {
    return model.contains(key) && model.at(key).is_string() ? model.at(key).get<std::string>() : std::string();
  };
  m.continuing_subword_prefix = str_or_empty("continuing_subword_prefix");
  m.end_of_word_suffix = str_or_empty("end_of_word_suffix");
  m.fuse_unk = model.value("fuse_unk", false);
  m.byte_fallback = model.value("byte_fallback", false);
  m.ignore_merges = model.value("ignore_merges", false);
  std::string unk = str_or_empty("unk_token");
  if (!unk.empty()) {
    auto it = m.vocab.find(unk);
    MP_CHECK(it != m.vocab.end(), what, ": unk_token ", json(unk).dump(), " is not in the vocabulary");
    m.unk_id = it->second;
  }

  const json& merges = model.at("merges");
  MP_CHECK(merges.is_array(), what, ": model.merges must be an array");
  m.merges.reserve(merges.size());
  uint32_t rank = 0;
  for (const json& merge : merges) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string& s = merge.get_ref<const std::string&>();
      size_t space = s.find(' ');
      MP_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, what, ": merge ", rank,
               " ", json(s).dump(), " is not two tokens separated by one space");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else {
      MP_CHECK(merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(), what,
               ": merge ", rank, " must be \"a b\" or [\"a\", \"b\"], found ", merge.dump().substr(0, 100));
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    }
    auto find = [&](const std::string& token) {
      auto it = m.vocab.find(token);
      MP_CHECK(it != m.vocab.end(), what, ": merge ", rank, " uses ", json(token).dump(), ", which is not in the vocabulary");
      return it->second;
    };
    uint32_t a = find(left), b = find(right);
    std::string merged = left;
    const std::string& prefix = m.continuing_subword_prefix;
    merged += (!prefix.empty() && right.compare(0, prefix.size(), prefix) == 0) ? right.substr(prefix.size()) : right;
    uint32_t new_id = find(merged);
    // A pair listed twice takes its last rank, as `tokenizers` (collecting into a hash map) does.
    m.merges[(uint64_t(a) << 32) | b] = MergeResult{rank, new_id};
    ++rank;
  }
  m.prepare_rules();
  return m;
}

void BpeModel::prepare_rules() {
  const ByteLevelMap& map = ByteLevelMap::get();
  for (int kind = 0; kind < 4; ++kind) {
    bool first = kind & 1, last = kind & 2;
    for (int b = 0; b < 256; ++b) {
      std::string s;
      if (!first) s += continuing_subword_prefix;
      s += map.byte_to_utf8[b];
      if (last) s += end_of_word_suffix;
      SymbolRule& rule = rules[kind][b];
      rule = SymbolRule();
      if (auto it = vocab.find(s); it != vocab.end()) {
        rule.kind = SymbolRule::Id;
        rule.count = 1;
        rule.ids[0] = it->second;
        continue;
      }
      if (byte_fallback && s.size() <= rule.ids.size()) {
        bool all = true;
        for (size_t k = 0; k < s.size() && all; ++k) {
          char name[8];
          std::snprintf(name, sizeof name, "<0x%02X>", unsigned(static_cast<unsigned char>(s[k])));
          auto it = vocab.find(name);
          if (it == vocab.end()) all = false;
          else rule.ids[k] = it->second;
        }
        if (all) {
          rule.kind = SymbolRule::Fallback;
          rule.count = uint8_t(s.size());
          continue;
        }
      }
      rule.kind = unk_id ? SymbolRule::Unk : SymbolRule::Drop;
    }
  }
}

namespace {
struct Symbol {
  uint32_t id;
  int32_t prev, next;
  bool alive;
};
struct QueuedMerge {
  uint32_t rank, pos, new_id;
  bool operator<(const QueuedMerge& o) const {  // priority_queue pops the largest: invert for min-rank-first
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

// One cache per thread; entries of another model are dropped when this thread switches tokenizers.
struct WordCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> index;  // word -> (offset, count) in ids
  std::vector<uint32_t> ids;
  static constexpr size_t kMaxWordBytes = 64;
  static constexpr size_t kMaxEntries = 1 << 18;
  void reset(uint64_t new_owner) {
    owner = new_owner;
    index.clear();
    ids.clear();
  }
};
WordCache& thread_word_cache() {
  thread_local WordCache cache;
  return cache;
}
}  // namespace

void BpeModel::encode_word(std::string_view word, std::vector<uint32_t>& out) const {
  if (word.size() > WordCache::kMaxWordBytes) {
    encode_word_uncached(word, out);
    return;
  }
  WordCache& cache = thread_word_cache();
  if (cache.owner != instance) cache.reset(instance);
  std::string key(word);
  auto it = cache.index.find(key);
  if (it != cache.index.end()) {
    const uint32_t* p = cache.ids.data() + it->second.first;
    out.insert(out.end(), p, p + it->second.second);
    return;
  }
  size_t before = out.size();
  encode_word_uncached(word, out);
  if (cache.index.size() >= WordCache::kMaxEntries) cache.reset(instance);
  uint32_t offset = uint32_t(cache.ids.size());
  cache.ids.insert(cache.ids.end(), out.begin() + before, out.end());
  cache.index.emplace(std::move(key), std::make_pair(offset, uint32_t(out.size() - before)));
}

void BpeModel::encode_word_uncached(std::string_view word, std::vector<uint32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {  // a whole word in the vocabulary is one token, whatever the merges would give
    const ByteLevelMap& map = ByteLevelMap::get();
    std::string mapped;
    for (unsigned char b : word) mapped += map.byte_to_utf8[b];
    if (auto it = vocab.find(mapped); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](uint32_t id) {
    int32_t k = int32_t(symbols.size());
    if (k > 0) symbols.back().next = k;
    symbols.push_back({id, k - 1, -1, true});
  };
  uint32_t pending_unk = 0;  // an unknown-token symbol not yet added (so consecutive ones can fuse)
  bool has_pending_unk = false;
  for (size_t i = 0; i < word.size(); ++i) {
    int kind = (i == 0 ? 1 : 0) | (i + 1 == word.size() ? 2 : 0);
    const SymbolRule& rule = rules[kind][static_cast<unsigned char>(word[i])];
    switch (rule.kind) {
      case SymbolRule::Id:
        if (has_pending_unk) add(pending_unk), has_pending_unk = false;
        add(rule.ids[0]);
        break;
      case SymbolRule::Fallback:  // like `tokenizers`, a pending unknown is not flushed before fallback bytes
        for (int k = 0; k < rule.count; ++k) add(rule.ids[k]);
        break;
      case SymbolRule::Unk:
        if (has_pending_unk && !fuse_unk) add(pending_unk);
        pending_unk = *unk_id;
        has_pending_unk = true;
        break;
      case SymbolRule::Drop:
        break;
    }
  }
  if (has_pending_unk) add(pending_unk);

  if (symbols.size() > 1) {
    auto lookup = [&](uint32_t a, uint32_t b) -> const MergeResult* {
      auto it = merges.find((uint64_t(a) << 32) | b);
      return it == merges.end() ? nullptr : &it->second;
    };
    std::vector<QueuedMerge> storage;
    storage.reserve(symbols.size() * 2);
    std::priority_queue<QueuedMerge> queue(std::less<QueuedMerge>(), std::move(storage));
    for (size_t k = 0; k + 1 < symbols.size(); ++k)
      if (const MergeResult* m = lookup(symbols[k].id, symbols[k + 1].id))
        queue.push({m->rank, uint32_t(k), m->new_id});
    while (!queue.empty()) {
      QueuedMerge top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      const MergeResult* now = lookup(left.id, right.id);
      if (now == nullptr || now->new_id != top.new_id) continue;  // stale entry
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = int32_t(top.pos);
      if (left.prev >= 0)
        if (const MergeResult* m = lookup(symbols[left.prev].id, left.id))
          queue.push({m->rank, uint32_t(left.prev), m->new_id});
      if (left.next >= 0)
        if (const MergeResult* m = lookup(left.id, symbols[left.next].id)) queue.push({m->rank, top.pos, m->new_id});
    }
  }
  for (const Symbol& s : symbols)
    if (s.alive) out.push_back(s.id);
}

}  // namespace mp::detail
