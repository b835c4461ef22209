// minipuzzle eval CKPT --data FILE [--seq-len L] [--logits-out FILE]: held-out perplexity.
#include <c10/core/GradMode.h>

#include <cstdio>
#include <filesystem>

#include "minipuzzle/checkpoint.h"
#include "minipuzzle/evaluate.h"
#include "minipuzzle/model.h"
#include "minipuzzle/safetensors.h"
#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"
#include "src/cli/command.h"
#include "src/cli/common.h"

namespace mp::cli {
namespace {

struct EvalArgs {
  std::string checkpoint, data, logits_out, tokenizer, device = "auto", data_format = "auto";
  int64_t seq_len = 512, batch = 4, max_tokens = 0;
};

void run(const EvalArgs& a) {
  auto ck = Checkpoint::open(a.checkpoint);
  auto tokenizer = tokenizer_for_text(a.tokenizer, a.checkpoint);
  TokenFile tokens = open_data_argument(a.data, "--data", a.data_format, tokenizer.get(), ck.config().vocab_size);
  c10::Device device = parse_device(a.device);
  auto model = NemotronH::load(ck, device, default_dtype(device));
  EvalResult r = evaluate_lm(model, tokens.data(), int64_t(tokens.num_tokens()), a.seq_len, a.batch, a.max_tokens);
  if (!a.logits_out.empty()) {
    const int64_t L = std::min<int64_t>(a.seq_len, tokens.num_tokens());
    at::Tensor ids = at::empty({1, L}, at::kLong);
    for (int64_t i = 0; i < L; ++i) ids[0][i] = int64_t(tokens.data()[i]);
    c10::AutoGradMode no_grad(false);
    at::Tensor logits = model.forward(ids.to(device)).cpu();
    std::string tmp = a.logits_out + ".tmp";
    save_safetensors(tmp, {{"input_ids", ids}, {"logits", logits}});
    std::filesystem::rename(tmp, a.logits_out);
  }
  json j{{"checkpoint", a.checkpoint}, {"data", a.data}, {"seq_len", a.seq_len}, {"sequences", r.sequences},
         {"predicted_tokens", r.predicted_tokens}, {"loss", r.loss}, {"perplexity", r.perplexity},
         {"device", device.str()}};
  std::printf("%s\n", j.dump(2).c_str());
}

void add(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* c = app.add_subcommand("eval", "Perplexity of a checkpoint over a token file or text");
  c->add_option("checkpoint", args->checkpoint, "Hugging Face checkpoint directory")->required();
  c->add_option("--data", args->data, "token file (minipuzzle data), Megatron PREFIX, .npy, UTF-8 text or a blend")
      ->required();
  add_data_format_option(c, &args->data_format);
  c->add_option("--seq-len", args->seq_len, "tokens per sequence")->capture_default_str();
  c->add_option("--batch-size", args->batch, "sequences per forward")->capture_default_str();
  c->add_option("--max-tokens", args->max_tokens, "read at most this many tokens (0: all)");
  c->add_option("--logits-out", args->logits_out, "write the first sequence's logits as safetensors");
  c->add_option("--tokenizer", args->tokenizer, "tokenizer.json for text input (default: the checkpoint's, else bytes)");
  add_device_option(c, &args->device);
  c->callback([args] { run(*args); });
}

}  // namespace
}  // namespace mp::cli

MP_REGISTER_COMMAND(eval, mp::cli::add);
