// Tokenizer throughput: encodes the paragraphs of the given files with N threads (documents handed out
// dynamically, as `minipuzzle data` does) and prints JSON. The first pass starts with empty word caches
// ("cold"); later passes reuse them ("warm", best of the rest). bench/bench_tokenizer_hf.py runs this next
// to `tokenizers`' encode_batch with the same thread count and the same documents.
// Usage: bench_tokenizer --tokenizer tokenizer.json|byte [--threads N] [--repeat R] FILES...
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "minipuzzle/error.h"
#include "minipuzzle/json.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"

namespace {

// All workers and the main thread meet here between passes.
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    uint64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen != gen_; });
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  uint64_t gen_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path = "byte";
  int threads = 2, repeat = 3;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--tokenizer" && i + 1 < argc) tokenizer_path = argv[++i];
    else if (a == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else if (a == "--repeat" && i + 1 < argc) repeat = std::stoi(argv[++i]);
    else files.push_back(a);
  }
  if (files.empty() || threads < 1 || repeat < 1) {
    std::fprintf(stderr, "usage: bench_tokenizer --tokenizer PATH [--threads N] [--repeat R] FILES...\n");
    return 2;
  }
  try {
    mp::Tokenizer tok = mp::Tokenizer::from_file(tokenizer_path);
    std::string text;
    for (const std::string& f : files) {
      std::ifstream in(f, std::ios::binary);
      if (!in) throw mp::Error("cannot read " + f);
      std::ostringstream s;
      s << in.rdbuf();
      text += s.str();
    }
    std::vector<std::string_view> docs = mp::split_paragraphs(text);
    uint64_t bytes = 0;
    for (auto d : docs) bytes += d.size();

    std::vector<double> seconds(repeat);
    std::vector<std::atomic<uint64_t>> tokens(repeat);
    std::vector<std::atomic<size_t>> next(repeat);
    for (int r = 0; r < repeat; ++r) tokens[r] = 0, next[r] = 0;
    Barrier barrier(threads + 1);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
      workers.emplace_back([&] {
        std::vector<uint32_t> ids;
        for (int r = 0; r < repeat; ++r) {
          barrier.wait();
          uint64_t count = 0;
          for (size_t k = next[r]++; k < docs.size(); k = next[r]++) {
            ids.clear();
            tok.encode_append(docs[k], ids);
            count += ids.size();
          }
          tokens[r] += count;
          barrier.wait();
        }
      });
    for (int r = 0; r < repeat; ++r) {
      barrier.wait();
      auto start = std::chrono::steady_clock::now();
      barrier.wait();
      seconds[r] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    for (auto& w : workers) w.join();
    double warm = seconds.size() > 1 ? *std::min_element(seconds.begin() + 1, seconds.end()) : seconds[0];
    mp::json out = {{"bench", "tokenizer"},
                    {"implementation", "minipuzzle C++"},
                    {"tokenizer", tokenizer_path},
                    {"threads", threads},
                    {"documents", docs.size()},
                    {"bytes", bytes},
                    {"tokens", tokens[0].load()},
                    {"cold_seconds", seconds[0]},
                    {"warm_seconds", warm},
                    {"cold_mb_per_s", bytes / 1e6 / seconds[0]},
                    {"warm_mb_per_s", bytes / 1e6 / warm}};
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
