// GPU host only (label "gpu"): the Mamba-2 CUDA kernels against the model's ATen math on the same device.
//
// Each kernel runs in bf16 (as the model does on CUDA) on inputs rounded to bf16; the reference runs the model's
// float32 ATen functions (src/model) on exactly those values, with autograd for the gradients. Both backpropagate
// the same random output weights. Every output and gradient is reported (JSON, one line each, also written to
// argv[1]) with two errors:
//   scaled_max = max|ours - ref| / max|ref|     tolerance 5e-2 (a few bf16 roundings of the largest values)
//   rel_l2     = ||ours - ref|| / ||ref||       tolerance 2e-2
// Without a CUDA device it prints why and exits 77 (ctest: Skipped). Exit 1 when any check fails.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAFunctions.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "minipuzzle/config.h"
#include "kernels/mamba_internal.h"
#include "minipuzzle/kernels.h"
#include "src/model/layers.h"
#include "tests/kernels_mamba/mamba_reference.h"

namespace k = mp::kernels;

namespace {

// All Mamba ops through their kernels (on) or none (the model's eager ATen path), via KernelOptions.
void set_mamba_kernels(bool on) {
  mp::kernels::KernelOptions o = mp::kernels::kernel_options();
  mp::kernels::parse_mamba_kernels(on ? "all" : "none", &o);
  mp::kernels::set_kernel_options(o);
}

constexpr double kMaxTol = 5e-2, kL2Tol = 2e-2;

struct Report {
  std::vector<std::string> lines;
  int failures = 0;

  void compare(const std::string& kernel, const std::string& which, const std::string& tensor, const at::Tensor& ours,
               const at::Tensor& ref, double max_tol = kMaxTol, double l2_tol = kL2Tol) {
    std::ostringstream s;
    s << "{\"kernel\":\"" << kernel << "\",\"case\":\"" << which << "\",\"tensor\":\"" << tensor << "\"";
    bool pass = false;
    if (!ours.defined() || !ref.defined() || ours.sizes() != ref.sizes()) {
      s << ",\"error\":\"missing or shape mismatch\"";
    } else {
      const double mx = mp::test::scaled_max_error(ours, ref), l2 = mp::test::relative_l2_error(ours, ref);
      const bool finite = at::isfinite(ours.to(at::kFloat)).all().item<bool>();
      pass = finite && mx <= max_tol && l2 <= l2_tol;
      s << ",\"scaled_max_err\":" << mx << ",\"rel_l2_err\":" << l2 << ",\"finite\":" << (finite ? "true" : "false")
        << ",\"ref_absmax\":" << ref.abs().max().item<double>();
    }
    s << ",\"tol_scaled_max\":" << max_tol << ",\"tol_rel_l2\":" << l2_tol << ",\"pass\":" << (pass ? "true" : "false")
      << "}";
    add(s.str(), pass);
  }
  void note(const std::string& kernel, const std::string& which, const std::string& msg, bool pass) {
    std::string clean;
    for (char c : msg) clean += (c == '"' || c == '\\') ? '\'' : (c == '\n' ? ' ' : c);
    add("{\"kernel\":\"" + kernel + "\",\"case\":\"" + which + "\",\"note\":\"" + clean + "\",\"pass\":" +
            (pass ? "true" : "false") + "}",
        pass);
  }
  void add(const std::string& line, bool pass) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    lines.push_back(line);
    if (!pass) ++failures;
  }
};

struct Run {
  at::Tensor out;
  std::vector<at::Tensor> grads;
};

Run run_with_grads(const std::vector<at::Tensor>& inputs, const at::Tensor& weights,
                   const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f) {
  std::vector<at::Tensor> leaves;
  for (const auto& t : inputs) leaves.push_back(t.detach().clone().requires_grad_(true));
  Run r;
  r.out = f(leaves);
  (r.out.to(at::kFloat) * weights).sum().backward();
  for (auto& l : leaves) r.grads.push_back(l.grad());
  c10::cuda::device_synchronize();
  return r;
}

at::Tensor bf16_cuda(const at::Tensor& t) { return t.to(at::kCUDA).to(at::kBFloat16); }

void test_ssd(Report& rep) {
  const std::vector<mp::test::SsdCase> cases = {
      {1, 64, 2, 32, 1, 32, 64},      // one chunk: no recurrence across chunks
      {2, 300, 8, 64, 2, 32, 64},     // padding, 5 chunks, 4 heads per group
      {1, 512, 16, 64, 4, 128, 128},  // the 8B model's head_dim, state and chunk
      {1, 1024, 32, 64, 2, 128, 128}, // 16 heads per group as in the 8B model
      {1, 512, 32, 80, 2, 128, 128},  // Nano 12B/9B v2's head_dim 80: row sums over 16-lane segments
      {2, 256, 8, 40, 2, 64, 64},     // head_dim 40: 8-lane segments
  };
  for (const auto& c : cases) {
    std::ostringstream name;
    name << "B" << c.batch << "_T" << c.T << "_H" << c.H << "_P" << c.P << "_G" << c.G << "_N" << c.N << "_Q"
         << c.chunk;
    try {
      const bool supported = k::ssd_scan_cuda_supported(c.H, c.P, c.G, c.chunk);
      rep.note("ssd_scan", name.str(), supported ? "CUDA kernel path" : "shape not supported by the CUDA kernel",
               supported);
      const auto in = mp::test::make_ssd_inputs(c, 100 + c.T);
      // Kernel inputs as the model holds them on CUDA: bf16 x, B, C, dt, D; float A.
      const std::vector<at::Tensor> kin = {bf16_cuda(in.x), bf16_cuda(in.dt), in.A.to(at::kCUDA),
                                           bf16_cuda(in.Bm), bf16_cuda(in.Cm), bf16_cuda(in.D)};
      std::vector<at::Tensor> rin;
      for (const auto& t : kin) rin.push_back(t.to(at::kFloat));
      const at::Tensor weights = at::randn({c.batch, c.T, c.H, c.P}).to(at::kCUDA);
      const Run ours = run_with_grads(kin, weights, [&](const std::vector<at::Tensor>& v) {
        return k::ssd_scan(v[0], v[1], v[2], v[3], v[4], v[5], c.chunk);
      });
      const Run ref = run_with_grads(rin, weights, [&](const std::vector<at::Tensor>& v) {
        return mp::model::ssd_chunk_scan(v[0], v[1], v[2], v[3], v[4], v[5], c.chunk);
      });
      rep.compare("ssd_scan", name.str(), "y", ours.out, ref.out);
      const char* names[] = {"dx", "ddt", "dA", "dB", "dC", "dD"};
      for (size_t i = 0; i < 6; ++i) rep.compare("ssd_scan", name.str(), names[i], ours.grads[i], ref.grads[i]);
      // Every intermediate buffer of the CUDA pipeline against the ATen twin's (same layouts): the first stage
      // that differs names the kernel or GEMM at fault.
      if (supported) {
        std::map<std::string, at::Tensor> twin;
        mp::kernels::detail::ssd_backward_aten(rin[0], rin[1], rin[2], rin[3], rin[4], rin[5], c.chunk, weights,
                                               &twin);
        const auto stages = mp::kernels::detail::ssd_stages_cuda(kin[0], kin[1], kin[2], kin[3], kin[4], kin[5],
                                                                 c.chunk, weights);
        for (const auto& [stage, value] : twin) {
          const auto found = stages.find(stage);
          if (found == stages.end()) continue;
          rep.compare("ssd_stage", name.str(), stage, found->second.to(at::kFloat), value);
        }
      }
    } catch (const std::exception& e) {
      rep.note("ssd_scan", name.str(), std::string("exception: ") + e.what(), false);
    }
  }
}

void test_conv(Report& rep) {
  for (auto dtype : {at::kBFloat16, at::kFloat}) {
    const std::string name = dtype == at::kFloat ? "f32_B2_T300_C1280_K4" : "bf16_B2_T300_C1280_K4";
    try {
      at::manual_seed(11);
      const int64_t B = 2, T = 300, C = 1280, K = 4;
      // x a strided slice of a wider tensor (in_proj's output).
      const at::Tensor wide = at::randn({B, T, C + 96}).to(at::kCUDA).to(dtype);
      const at::Tensor x = wide.narrow(2, 64, C);
      const at::Tensor w = (at::randn({C, 1, K}) * 0.5).to(at::kCUDA).to(dtype);
      const at::Tensor b = at::randn({C}).to(at::kCUDA).to(dtype);
      const at::Tensor weights = at::randn({B, T, C}).to(at::kCUDA);
      const Run ours = run_with_grads({x, w, b}, weights, [](const std::vector<at::Tensor>& v) {
        return k::causal_conv1d_silu(v[0], v[1], v[2]);
      });
      const Run ref = run_with_grads({x.to(at::kFloat), w.to(at::kFloat), b.to(at::kFloat)}, weights,
                                     [&](const std::vector<at::Tensor>& v) {
                                       return at::silu(at::conv1d(v[0].transpose(1, 2), v[1], v[2], 1, K - 1, 1, C)
                                                           .narrow(-1, 0, T))
                                           .transpose(1, 2);
                                     });
      rep.compare("causal_conv1d_silu", name, "out", ours.out, ref.out);
      rep.compare("causal_conv1d_silu", name, "dx", ours.grads[0], ref.grads[0]);
      rep.compare("causal_conv1d_silu", name, "dweight", ours.grads[1], ref.grads[1]);
      rep.compare("causal_conv1d_silu", name, "dbias", ours.grads[2], ref.grads[2]);
    } catch (const std::exception& e) {
      rep.note("causal_conv1d_silu", name, std::string("exception: ") + e.what(), false);
    }
  }
}

void test_norm(Report& rep) {
  for (int64_t groups : {8, 1}) {
    for (bool masked : {false, true}) {
      const std::string name = "R600_C1024_G" + std::to_string(groups) + (masked ? "_masked" : "");
      try {
        at::manual_seed(13 + groups);
        const int64_t B = 2, T = 300, C = 1024;
        const at::Tensor y = at::randn({B, T, C}).to(at::kCUDA);  // float32, as the scan returns
        const at::Tensor zwide = at::randn({B, T, C + 200}).to(at::kCUDA).to(at::kBFloat16);
        const at::Tensor z = zwide.narrow(2, 100, C);
        const at::Tensor w = (1 + 0.1 * at::randn({C})).to(at::kCUDA).to(at::kBFloat16);
        at::Tensor mask;
        if (masked) mask = (at::rand({C}) > 0.3).to(at::kFloat).to(at::kCUDA);
        const at::Tensor weights = at::randn({B, T, C}).to(at::kCUDA);
        const Run ours = run_with_grads({y, z, w}, weights, [&](const std::vector<at::Tensor>& v) {
          return k::gated_rms_norm(v[0], v[1], v[2], groups, 1e-5, mask);
        });
        const Run ref = run_with_grads({y, z.to(at::kFloat), w.to(at::kFloat)}, weights,
                                       [&](const std::vector<at::Tensor>& v) {
                                         return mp::model::gated_rms_norm(v[0], v[1], v[2], groups, 1e-5, mask);
                                       });
        rep.compare("gated_rms_norm", name, "out", ours.out, ref.out);
        rep.compare("gated_rms_norm", name, "dy", ours.grads[0], ref.grads[0]);
        rep.compare("gated_rms_norm", name, "dz", ours.grads[1], ref.grads[1]);
        rep.compare("gated_rms_norm", name, "dweight", ours.grads[2], ref.grads[2]);
        const at::Tensor bf = k::gated_rms_norm(y, z, w, groups, 1e-5, mask, at::kBFloat16);
        rep.compare("gated_rms_norm", name, "out_bf16", bf, ref.out.detach());
      } catch (const std::exception& e) {
        rep.note("gated_rms_norm", name, std::string("exception: ") + e.what(), false);
      }
    }
  }
}

void test_relu2(Report& rep) {
  try {
    at::manual_seed(17);
    const at::Tensor x = bf16_cuda(at::randn({1000, 3000}));
    const at::Tensor weights = at::randn({1000, 3000}).to(at::kCUDA);
    const Run ours = run_with_grads({x}, weights, [](const std::vector<at::Tensor>& v) { return k::relu_squared(v[0]); });
    const Run ref = run_with_grads({x.to(at::kFloat)}, weights, [](const std::vector<at::Tensor>& v) {
      const at::Tensor a = at::relu(v[0]);
      return a * a;
    });
    rep.compare("relu_squared", "bf16_1000x3000", "out", ours.out, ref.out);
    rep.compare("relu_squared", "bf16_1000x3000", "dx", ours.grads[0], ref.grads[0]);
  } catch (const std::exception& e) {
    rep.note("relu_squared", "bf16_1000x3000", std::string("exception: ") + e.what(), false);
  }
}

// The whole Mamba-2 mixer as the model runs it on CUDA in bf16 (kernels wired in) against the same mixer on the
// same device in float32 through the model's ATen path (kernels turned off): output and gradients. Looser bounds
// (scaled_max 0.1, rel_l2 0.05): end to end, bf16 also rounds in_proj's output and dt before the exponential
// decays, which the per-kernel checks above exclude by feeding both sides the same rounded inputs.
void test_mixer(Report& rep) {
  const std::string name = "B2_T200_hidden256_H8x32_G2_N32_Q64";
  try {
    mp::ModelConfig c;
    c.hidden_size = 256, c.mamba_num_heads = 8, c.mamba_head_dim = 32, c.n_groups = 2, c.ssm_state_size = 32;
    c.conv_kernel = 4, c.chunk_size = 64, c.layers = {mp::LayerType::Mamba};
    const int64_t H = c.mamba_num_heads, d_inner = c.mamba_d_inner(), conv_dim = c.mamba_conv_dim();
    at::manual_seed(21);
    std::map<std::string, at::Tensor> cpu;
    cpu["in_proj.weight"] = at::randn({c.mamba_in_proj_dim(), c.hidden_size}) * 0.06;
    cpu["conv1d.weight"] = at::randn({conv_dim, 1, c.conv_kernel}) * 0.3;
    cpu["conv1d.bias"] = at::randn({conv_dim}) * 0.1;
    cpu["A_log"] = at::log(at::rand({H}) * 15 + 1);
    cpu["dt_bias"] = at::randn({H}) * 0.5 - 2;
    cpu["D"] = at::randn({H});
    cpu["norm.weight"] = 1 + 0.1 * at::randn({d_inner});
    cpu["out_proj.weight"] = at::randn({c.hidden_size, d_inner}) * 0.06;
    std::vector<std::string> names;
    std::vector<at::Tensor> bf_inputs{bf16_cuda(at::randn({2, 200, c.hidden_size}))};
    for (auto& [n, t] : cpu) {
      names.push_back(n);
      bf_inputs.push_back(n == "A_log" ? t.to(at::kCUDA) : bf16_cuda(t));  // A_log stays float, as checkpoints keep it
    }
    std::vector<at::Tensor> f32_inputs;
    for (const auto& t : bf_inputs) f32_inputs.push_back(t.to(at::kFloat));
    const mp::ForwardOptions options;
    auto mixer = [&](const std::vector<at::Tensor>& v) {
      std::map<std::string, at::Tensor> ps;
      for (size_t i = 0; i < names.size(); ++i) ps[names[i]] = v[i + 1];
      const mp::model::Params p{ps, ""};
      const mp::model::LayerContext ctx{c, 0, options, nullptr};
      return mp::model::mamba2_mixer(ctx, p, v[0]);
    };
    const at::Tensor weights = at::randn({2, 200, c.hidden_size}).to(at::kCUDA);
    set_mamba_kernels(true);
    const Run ours = run_with_grads(bf_inputs, weights, mixer);
    set_mamba_kernels(false);
    const Run ref = run_with_grads(f32_inputs, weights, mixer);
    set_mamba_kernels(true);
    rep.compare("mamba2_mixer", name, "out", ours.out, ref.out, 0.1, 0.05);
    rep.compare("mamba2_mixer", name, "dh", ours.grads[0], ref.grads[0], 0.1, 0.05);
    for (size_t i = 0; i < names.size(); ++i)
      rep.compare("mamba2_mixer", name, "d" + names[i], ours.grads[i + 1], ref.grads[i + 1], 0.1, 0.05);
  } catch (const std::exception& e) {
    rep.note("mamba2_mixer", name, std::string("exception: ") + e.what(), false);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (!at::hasCUDA() || c10::cuda::device_count() == 0) {
    std::printf("{\"test\":\"mamba_kernels_gpu\",\"skipped\":\"no CUDA device\"}\n");
    return 77;
  }
  Report rep;
  test_conv(rep);
  test_norm(rep);
  test_relu2(rep);
  test_ssd(rep);
  test_mixer(rep);  // last: an illegal access there would poison the context for everything after it
  std::printf("{\"test\":\"mamba_kernels_gpu\",\"checks\":%zu,\"failures\":%d}\n", rep.lines.size(), rep.failures);
  if (argc > 1) {
    std::ofstream out(argv[1]);
    out << "[\n";
    for (size_t i = 0; i < rep.lines.size(); ++i) out << rep.lines[i] << (i + 1 < rep.lines.size() ? ",\n" : "\n");
    out << "]\n";
  }
  return rep.failures == 0 ? 0 : 1;
}
