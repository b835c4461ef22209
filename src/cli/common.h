// Small helpers shared by the subcommands: device choice and the precision that goes with it.
#pragma once
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <memory>
#include <string>

#include "minipuzzle/token_file.h"
#include "minipuzzle/tokenizer.h"

namespace mp::cli {

// "auto" (CUDA when available), "cpu", "cuda", "cuda:N". Throws a clear error for CUDA without a GPU.
c10::Device parse_device(const std::string& text);
// CPU runs in float32, CUDA in bfloat16 (the model's two supported precisions).
at::ScalarType default_dtype(c10::Device device);
void add_device_option(CLI::App* app, std::string* device);
// --moe-kernel loop|grouped and --mamba-kernels all|none|conv,ssd,norm: the model's kernel choices
// (mp::kernels::KernelOptions), applied process-wide when given; the defaults (loop, all) otherwise.
void add_kernel_options(CLI::App* app);
// The tokenizer for text input: --tokenizer, else the checkpoint's tokenizer.json, else byte-level (nullptr;
// also for --tokenizer byte).
std::unique_ptr<Tokenizer> tokenizer_for_text(const std::string& explicit_path, const std::string& checkpoint);
// --data-format, the kind of every data argument of a command (see minipuzzle/data_input.h).
void add_data_format_option(CLI::App* app, std::string* format);
// A data argument (--data, --calib, --valid) through the one resolver, its ids checked against `vocab_size`.
TokenFile open_data_argument(const std::string& path, const std::string& option, const std::string& format,
                             const Tokenizer* tokenizer, int64_t vocab_size);

}  // namespace mp::cli
