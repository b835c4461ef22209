// Offline teacher logits (issue 28) on CPU:
//   - the row codec: ids exact, lse exact, logits within the stated rounding of each encoding (bf16: 2^-8 of the gap
//     below the row max; q8: the square-root companding step; f32: exact), bytes per row as documented;
//   - the store: rows equal the teacher's own top-k and log-sum-exp (recomputed here from a teacher forward),
//     shards written atomically and skipped on rerun, a missing shard rewritten alone, other settings refused, an
//     incomplete store refused by the reader, an unknown window refused by OfflineTeacher;
//   - at k = V (lossless f32 logits) the offline micro-batch loss and every student gradient equal the online dense
//     loss's (ModelTeacher + kd_loss), at T = 1 and T = 2 with CE mixing;
//   - a tiny student distilled offline (k = 32 of 256) from a teacher trained from scratch: val_loss and val_kl
//     fall, and the final val_loss is within 0.05 nats of online distillation's with the same settings.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/fs.h"
#include "minipuzzle/kd.h"
#include "minipuzzle/teacher_logits.h"
#include "minipuzzle/token_file.h"
#include "tests/catch.h"
#include "tests/fixtures.h"
#include "tests/run_command.h"

using namespace mp;
using namespace mp::distill;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ModelConfig tiny_config(int64_t hidden, const std::string& pattern) {
  json j{{"model_type", "nemotron_h"}, {"vocab_size", 256}, {"hidden_size", hidden},
         {"intermediate_size", 2 * hidden}, {"hybrid_override_pattern", pattern}, {"num_attention_heads", 4},
         {"num_key_value_heads", 2}, {"head_dim", hidden / 4}, {"mamba_num_heads", 4},
         {"mamba_head_dim", hidden / 4}, {"n_groups", 1}, {"ssm_state_size", 16}, {"conv_kernel", 4},
         {"chunk_size", 32}, {"tie_word_embeddings", false}, {"time_step_min", 0.001},
         {"layer_norm_epsilon", 1e-5}, {"torch_dtype", "float32"}};
  return ModelConfig::from_json(j, "tiny test config");
}

// Byte-level token files of tinyshakespeare, a random teacher and a random student, made once.
struct Setup {
  std::string dir, train, valid, teacher, student;
};
const Setup& setup() {
  static Setup s = [] {
    Setup s;
    s.dir = test::temp_dir("teacher_logits");
    const std::string text = read_text(test::shared_data("tinyshakespeare.txt"));
    REQUIRE(text.size() > 300000);
    auto write = [&](const std::string& name, size_t begin, size_t size) {
      std::vector<uint32_t> ids;
      for (size_t i = begin; i < begin + size; ++i) ids.push_back(uint8_t(text[i]));
      TokenFileMetadata meta;
      meta.tokenizer_kind = "byte_level";
      meta.vocab_size = 256;
      TokenFileWriter w(s.dir + "/" + name, meta);
      w.add_document(ids);
      w.finish();
      return s.dir + "/" + name;
    };
    s.train = write("train", 0, 120000);
    s.valid = write("valid", 250000, 8192);
    s.teacher = s.dir + "/random_teacher";
    NemotronH::random_init(tiny_config(48, "M*M-"), 3, c10::kCPU, at::kFloat).save(s.teacher, DType::F32);
    s.student = s.dir + "/student";
    NemotronH::random_init(tiny_config(32, "M*-"), 7, c10::kCPU, at::kFloat).save(s.student, DType::F32);
    return s;
  }();
  return s;
}

TeacherLogitsOptions store_options(const std::string& out, int64_t k, const std::string& encoding) {
  const Setup& s = setup();
  TeacherLogitsOptions o;
  o.teacher = s.teacher;
  o.data = s.train;
  o.out_dir = out;
  o.top_k = k;
  o.seq_len = 32;
  o.batch_size = 3;
  o.logit_encoding = encoding;
  o.windows_per_shard = 3;
  o.max_windows = 8;
  return o;
}

at::Tensor window_ids(const std::string& data, int64_t seq_len, std::vector<int64_t> which) {
  PackedWindows w(std::make_shared<const TokenFile>(TokenFile::open(data)), seq_len);
  std::vector<at::Tensor> rows;
  for (int64_t i : which) rows.push_back(w.window(i).narrow(0, 0, seq_len));
  return at::stack(rows);
}

// Rows in ascending order of the ids (the stored order under Elias-Fano), values alongside.
std::pair<at::Tensor, at::Tensor> by_id(const at::Tensor& ids, const at::Tensor& values) {
  auto sorted = at::sort(ids.to(at::kLong), 1);
  return {std::get<0>(sorted), values.gather(1, std::get<1>(sorted))};
}

}  // namespace

TEST_CASE("row codec: ids and lse exact, logits within each encoding's rounding, documented row size") {
  at::manual_seed(1);
  for (int64_t vocab : {256, 1000, 131072}) {
    for (const char* name : {"bf16", "q8", "f32"}) {
      const int64_t k = std::min<int64_t>(vocab, 128), rows = 20;
      const LogitEncoding enc = logit_encoding_from_name(name);
      const RowCodec codec(vocab, k, enc, 2);
      // Elias-Fano at k = 128: floor(log2(V / k)) low bits per id + k + ((V - 1) >> low) + 1 high bits, in bytes:
      // V 256: 128 + 128 + 128 = 384 bits; V 1000: 256 + 128 + 250 = 634; V 131072: 1280 + 128 + 128 = 1536.
      const int64_t id_bytes = vocab == 256 ? 48 : vocab == 1000 ? 80 : 192;
      CHECK(codec.elias_fano);
      CHECK(codec.id_bytes() == id_bytes);
      const int64_t per_logit = enc == LogitEncoding::q8 ? 1 : enc == LogitEncoding::f32 ? 4 : 2;
      CHECK(codec.row_bytes() == 8 + 4 + (enc == LogitEncoding::q8 ? 4 : 0) + per_logit * k + id_bytes);
      auto top = at::topk(at::randn({rows, vocab}) * 4 + 10, k, 1);
      at::Tensor values = std::get<0>(top).contiguous(), ids = std::get<1>(top).contiguous();
      const at::Tensor lse = at::randn({rows, 2}).contiguous();
      std::vector<uint8_t> buf(size_t(codec.row_bytes() * rows));
      for (int64_t r = 0; r < rows; ++r)
        codec.encode(ids.data_ptr<int64_t>() + r * k, values.data_ptr<float>() + r * k, lse.data_ptr<float>() + 2 * r,
                     buf.data() + r * codec.row_bytes());
      at::Tensor dids = at::empty({rows, k}, at::kInt), dval = at::empty({rows, k}), dlse = at::empty({rows, 2});
      for (int64_t r = 0; r < rows; ++r)
        codec.decode(buf.data() + r * codec.row_bytes(), dids.data_ptr<int32_t>() + r * k, dval.data_ptr<float>() + r * k,
                     dlse.data_ptr<float>() + 2 * r);
      INFO("vocab " << vocab << " encoding " << name);
      CHECK(at::equal(dlse, lse));
      const at::Tensor top1 = values.select(1, 0).unsqueeze(1), top_k = values.select(1, k - 1).unsqueeze(1);
      std::tie(ids, values) = by_id(ids, values);  // the stored order
      CHECK(at::equal(dids.to(at::kLong), ids));
      const at::Tensor gap = top1 - values;
      const at::Tensor err = (dval - values).abs();
      if (enc == LogitEncoding::f32) {
        CHECK(at::equal(dval, values));
      } else if (enc == LogitEncoding::bf16) {
        CHECK((err <= gap * (1.0 / 256) + 1e-5).all().item<bool>());
      } else {
        // q = round(255 sqrt(gap / range)): |gap' - gap| <= range * ((u + 1/510)^2 - u^2), u = sqrt(gap / range).
        const at::Tensor range = top1 - top_k;
        const at::Tensor u = (gap / range).sqrt();
        const at::Tensor bound = range * ((u + 1.0 / 510).pow(2) - u.pow(2)) + 1e-5;
        CHECK((err <= bound).all().item<bool>());
        CHECK(at::where(gap == 0, err, 0.0).max().item<double>() == 0.0);  // the row maximum is exact
      }
    }
  }
}

TEST_CASE("row codec: bit-packed ids where Elias-Fano would be larger") {
  // V = 2^20, k = 2: Elias-Fano needs 2 x 19 + 2 + 2 = 42 bits, packing 2 x 20 = 40 bits.
  const RowCodec codec(1 << 20, 2, LogitEncoding::f32, 1);
  CHECK_FALSE(codec.elias_fano);
  CHECK(codec.id_bytes() == 5);
  const int64_t ids[2] = {1048575, 3};
  const float logits[2] = {5.f, -1.f}, lse = 7.f;
  std::vector<uint8_t> buf(size_t(codec.row_bytes()));
  codec.encode(ids, logits, &lse, buf.data());
  int32_t dids[2];
  float dlogits[2], dlse;
  codec.decode(buf.data(), dids, dlogits, &dlse);
  CHECK(dids[0] == 1048575);  // packed rows keep the order of the logits
  CHECK(dids[1] == 3);
  CHECK(dlogits[1] == -1.f);
  CHECK(dlse == 7.f);
}

TEST_CASE("store: rows are the teacher's top-k and lse; shards resumable and atomic; mismatches refused") {
  const Setup& s = setup();
  const std::string out = s.dir + "/store_bf16";
  TeacherLogitsOptions o = store_options(out, 16, "bf16");
  o.temperatures = {1.0, 2.0};
  const TeacherLogitsResult r = write_teacher_logits(o);
  CHECK(r.windows == 8);
  CHECK(r.tokens == 8 * 32);
  CHECK(r.shards == 3);
  CHECK(r.shards_written == 3);
  const RowCodec codec(256, 16, LogitEncoding::bf16, 2);
  CHECK(r.row_bytes == double(codec.row_bytes()));
  CHECK(r.bytes == 3 * 64 + 8 * (8 + 32 * codec.row_bytes()));
  CHECK(r.bytes_per_token == Approx(double(r.bytes) / (8 * 32)));

  // Decoded rows against a forward of the teacher here.
  auto store = TeacherLogitsStore::open(out);
  const NemotronH teacher = NemotronH::load(Checkpoint::open(s.teacher), c10::kCPU, at::kFloat);
  for (int64_t w : {0, 4, 7}) {
    const at::Tensor ids = window_ids(s.train, 32, {w});
    CHECK(store->find(window_hash(ids.data_ptr<int64_t>(), 32)) == w);
    const at::Tensor logits = teacher.forward(ids)[0];
    auto top = at::topk(logits, 16, -1);
    at::Tensor dids = at::empty({32, 16}, at::kInt), dval = at::empty({32, 16}), dlse = at::empty({32, 2});
    store->decode_window(w, dids.data_ptr<int32_t>(), dval.data_ptr<float>(), dlse.data_ptr<float>());
    const at::Tensor top1 = std::get<0>(top).select(1, 0).unsqueeze(1);
    const auto [want_ids, want_values] = by_id(std::get<1>(top), std::get<0>(top));
    CHECK(at::equal(dids.to(at::kLong), want_ids));
    CHECK(((dval - want_values).abs() <= (top1 - want_values) / 256 + 1e-5).all().item<bool>());
    CHECK(at::allclose(dlse.select(1, 0), at::logsumexp(logits, {-1}), 1e-6, 1e-6));
    CHECK(at::allclose(dlse.select(1, 1), at::logsumexp(logits / 2, {-1}), 1e-6, 1e-6));
  }
  store.reset();

  // A rerun skips every shard; a missing shard is rewritten alone, byte for byte the same.
  const std::string shard1 = read_text(out + "/shard-00001.bin");
  const TeacherLogitsResult again = write_teacher_logits(o);
  CHECK(again.shards_skipped == 3);
  CHECK(again.shards_written == 0);
  fs::remove(out + "/shard-00001.bin");
  const TeacherLogitsResult one = write_teacher_logits(o);
  CHECK(one.shards_written == 1);
  CHECK(one.shards_skipped == 2);
  CHECK(read_text(out + "/shard-00001.bin") == shard1);
  for (const std::string& f : fs::list_directory(out)) CHECK(f.find(".tmp") == std::string::npos);

  // Other settings into the same directory: refused.
  TeacherLogitsOptions other = o;
  other.top_k = 8;
  CHECK_THROWS_WITH(write_teacher_logits(other), MP_CONTAINS("other settings"));

  // The reader refuses an incomplete store.
  json m = json::parse(read_text(out + "/manifest.json"));
  m["complete"] = false;
  const std::string incomplete = s.dir + "/store_incomplete";
  fs::copy_tree(out, incomplete);
  fs::write_file_atomic(incomplete + "/manifest.json", m.dump());
  CHECK_THROWS_WITH(TeacherLogitsStore::open(incomplete), MP_CONTAINS("incomplete"));

  // OfflineTeacher: a stored window is served; one that is not (window 9 of the data) is an error.
  OfflineTeacher offline({out});
  CHECK(offline.sparse());
  const TeacherOutput t = offline.run(window_ids(s.train, 32, {2, 5}), false);
  CHECK(t.topk_ids.sizes() == at::IntArrayRef({2, 32, 16}));
  CHECK(t.lse_at(2.0).sizes() == at::IntArrayRef({2, 32}));
  CHECK_THROWS_WITH(t.lse_at(3.0), MP_CONTAINS("temperature"));
  CHECK_FALSE(offline.has_windows(window_ids(s.train, 32, {2, 9})));
  CHECK_THROWS_WITH(offline.run(window_ids(s.train, 32, {9}), false), MP_CONTAINS("not in the teacher logits"));
}

TEST_CASE("at k = V the offline loss and gradients equal online distillation's") {
  const Setup& s = setup();
  const std::string out = s.dir + "/store_full";
  TeacherLogitsOptions o = store_options(out, 256, "f32");
  o.temperatures = {2.0};
  write_teacher_logits(o);
  OfflineTeacher offline({out});
  ModelTeacher online(NemotronH::load(Checkpoint::open(s.teacher), c10::kCPU, at::kFloat));
  NemotronH student = NemotronH::load(Checkpoint::open(s.student), c10::kCPU, at::kFloat);
  student.set_requires_grad(true);
  PackedWindows windows(std::make_shared<const TokenFile>(TokenFile::open(s.train)), 32);
  const Batch batch = make_batch(windows, {1, 6, 3});
  for (double T : {1.0, 2.0}) {
    LossOptions lo;
    lo.alpha = 0.7;
    lo.temperature = T;
    auto run = [&](Teacher* teacher) {
      for (auto& [name, p] : student.parameters()) p.mutable_grad() = at::Tensor();
      at::Tensor loss = micro_batch_loss(student, teacher, batch, lo);
      loss.backward();
      std::map<std::string, at::Tensor> g;
      for (auto& [name, p] : student.parameters()) g[name] = p.grad().clone();
      return std::make_pair(loss.item<double>(), g);
    };
    const auto [off_loss, off_grads] = run(&offline);
    const auto [on_loss, on_grads] = run(&online);
    INFO("T " << T << " offline " << off_loss << " online " << on_loss);
    CHECK(std::abs(off_loss - on_loss) <= 1e-6 * std::abs(on_loss));
    for (auto& [name, g] : on_grads) {
      INFO(name);
      const double scale = std::max(1e-12, g.abs().max().item<double>());
      CHECK((off_grads.at(name) - g).abs().max().item<double>() <= 1e-4 * scale);
    }
  }
}

TEST_CASE("a tiny student distilled offline: val loss and KL fall, close to online distillation") {
  const Setup& s = setup();
  // Teacher: trained from scratch briefly (a random teacher has nothing to teach).
  DistillOptions t;
  t.from_scratch = true;
  t.student = s.dir + "/teacher_config.json";
  std::ofstream(t.student) << tiny_config(64, "M*M-").to_json().dump(2);
  t.train_data = s.train;
  t.valid_data = s.valid;
  t.out_dir = s.dir + "/trained_teacher";
  t.tokens = 40 * 8 * 64;
  t.seq_len = 64;
  t.micro_batch = 8;
  t.schedule.lr = 3e-3;
  t.schedule.min_lr = 3e-4;
  t.schedule.warmup_steps = 5;
  t.eval_every = 1000;
  t.eval_tokens = 2048;
  t.threads = 1;
  REQUIRE(run_distillation(t).exit_code == 0);
  const std::string teacher = t.out_dir + "/final";

  // Stores of the training and validation windows (k = 32 of 256, bf16).
  TeacherLogitsOptions so;
  so.teacher = teacher;
  so.top_k = 32;
  so.seq_len = 64;
  so.batch_size = 8;
  so.threads = 1;
  so.data = s.train;
  so.out_dir = s.dir + "/store_train";
  const TeacherLogitsResult tr = write_teacher_logits(so);
  so.data = s.valid;
  so.out_dir = s.dir + "/store_valid";
  write_teacher_logits(so);
  // A row of 4 (lse) + 4 (max) + 2 x 32 (bf16 gaps) + 20 (Elias-Fano ids: 32 x 3 low bits + 32 + 32 high bits)
  // bytes, plus the window hash and the shard header.
  CHECK(tr.row_bytes == 92);
  CHECK(tr.bytes_per_token == Approx(92 + 8.0 / 64 + 64.0 * tr.shards / double(tr.tokens)));

  auto distill = [&](bool offline) {
    DistillOptions d;
    if (offline) {
      d.teacher_logits = s.dir + "/store_train";
      d.teacher_logits_valid = s.dir + "/store_valid";
    } else {
      d.teacher = teacher;
    }
    d.student = s.student;
    d.train_data = s.train;
    d.valid_data = s.valid;
    d.out_dir = s.dir + (offline ? "/offline" : "/online");
    d.tokens = 30 * 8 * 64;
    d.seq_len = 64;
    d.micro_batch = 8;
    d.schedule.lr = 3e-3;
    d.schedule.min_lr = 3e-4;
    d.eval_every = 1000;
    d.eval_tokens = 2048;
    d.threads = 1;
    d.seed = 5;
    d.alpha = 0.5;
    d.fit = "off";
    return run_distillation(d);
  };
  const DistillResult off = distill(true);
  const DistillResult on = distill(false);
  REQUIRE(off.exit_code == 0);
  REQUIRE(on.exit_code == 0);
  json first_eval;
  {
    std::istringstream lines(read_text(s.dir + "/offline/log.jsonl"));
    std::string line;
    while (std::getline(lines, line))
      if (json j = json::parse(line); j.value("event", "") == "eval") {
        first_eval = j;
        break;
      }
  }
  INFO("offline first " << first_eval.dump() << " last " << off.last_eval.dump() << "; online last " << on.last_eval.dump());
  REQUIRE(first_eval.contains("val_kl"));
  CHECK(off.last_eval["val_loss"].get<double>() < first_eval["val_loss"].get<double>() - 0.3);
  CHECK(off.last_eval["val_kl"].get<double>() < 0.5 * first_eval["val_kl"].get<double>());
  CHECK(std::abs(off.last_eval["val_loss"].get<double>() - on.last_eval["val_loss"].get<double>()) < 0.05);
}

TEST_CASE("teacher-logits CLI: prints bytes/token and tokens/s, resumes, one-line errors") {
  const Setup& s = setup();
  const std::string bin = test::minipuzzle_binary(), out = s.dir + "/cli_store";
  const std::string cmd = bin + " teacher-logits " + s.teacher + " --data " + s.train + " -o " + out +
                          " --top-k 8 --seq-len 32 --max-windows 6 --windows-per-shard 4 --logit-encoding q8 --threads 1";
  auto r = test::run_command("MINIPUZZLE_PROGRESS=off " + cmd + " 2>&1");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(r.output.substr(r.output.find('{')));
  // q8 row at V = 256, k = 8: 4 + 4 + 4 + 8 + Elias-Fano ids (8 x 5 low bits + 8 + 7 + 1 high bits = 7 bytes).
  CHECK(j["row_bytes"].get<double>() == 27);
  CHECK(j["shards_written"] == 2);
  CHECK(j["tokens"] == 6 * 32);
  CHECK(j["tokens_per_s"].get<double>() > 0);
  CHECK(j["bytes_per_token"].get<double>() == Approx(27 + 8.0 / 32 + 2 * 64.0 / (6 * 32)).margin(1e-4));
  r = test::run_command("MINIPUZZLE_PROGRESS=off " + cmd + " 2>&1");
  REQUIRE(r.exit_code == 0);
  CHECK(json::parse(r.output.substr(r.output.find('{')))["shards_skipped"] == 2);
  // Bad command line: exit 2; a missing data file: exit 1 with one line.
  CHECK(test::run_command(bin + " teacher-logits " + s.teacher + " -o " + out + " 2>&1").exit_code == 2);
  r = test::run_command(bin + " teacher-logits " + s.teacher + " --data " + s.dir + "/nonexistent -o " + s.dir +
                        "/cli_bad 2>&1");
  CHECK(r.exit_code == 1);
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
  // distill with both a teacher and stored logits, or with another seq_len: refused.
  const std::string distill = bin + " distill --student " + s.student + " --data " + s.train + " --valid " + s.valid +
                              " --tokens 64 --threads 1 --fit off ";
  r = test::run_command(distill + "--teacher " + s.teacher + " --teacher-logits " + out + " -o " + s.dir + "/cli_d1 2>&1");
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("not both") != std::string::npos);
  r = test::run_command(distill + "--teacher-logits " + out + " --seq-len 64 -o " + s.dir + "/cli_d2 2>&1");
  CHECK(r.exit_code == 1);
  CHECK(r.output.find("--seq-len 32") != std::string::npos);
}

// --teacher-logits composes with --shard (issue 21): the sharded student runs the same sparse loss (its layers
// gathered, lm_head in the always-gathered root unit). At world size 1 the sharded step is the plain one, so the
// runs agree bit for bit (losses, evaluation, final weights).
TEST_CASE("distill --teacher-logits with --shard zero3 / zero2 equals the plain run at world size 1") {
  const Setup& s = setup();
  const std::string store = s.dir + "/store_shard";
  write_teacher_logits(store_options(store, 16, "bf16"));  // the first 8 windows of seq 32
  auto run = [&](const std::string& shard) {
    DistillOptions d;
    d.teacher_logits = store;
    d.student = s.student;
    d.train_data = s.train;
    d.valid_data = s.valid;
    d.out_dir = s.dir + "/shard_" + shard;
    d.tokens = 4 * 2 * 32;
    d.seq_len = 32;
    d.micro_batch = 2;
    d.eval_every = 2;
    d.eval_tokens = 96;
    d.threads = 1;
    d.seed = 3;
    d.alpha = 0.6;
    d.fit = "off";
    d.shard = shard;
    const DistillResult r = run_distillation(d);
    REQUIRE(r.exit_code == 0);
    return r;
  };
  const DistillResult plain = run("none");
  for (const std::string shard : {"zero3", "zero2"}) {
    INFO(shard);
    const DistillResult sharded = run(shard);
    REQUIRE(sharded.train_loss.size() == 4);
    CHECK(sharded.train_loss == plain.train_loss);
    CHECK(sharded.last_eval["val_loss"] == plain.last_eval["val_loss"]);
    CHECK(read_text(s.dir + "/shard_" + shard + "/final/model.safetensors") ==
          read_text(s.dir + "/shard_none/final/model.safetensors"));
  }
}
