// The host update of optimizer offload (issue 20): AdamW with all state in host memory, timed per step, against
// the same AdamW with its state beside the parameters (resident; on CPU both run ATen's fused kernel) and against
// the memory-bandwidth limit of the host update: 28 bytes per parameter (bf16 gradient in, fp32 master and both
// moments read and written, bf16 weight out) at the host's copy bandwidth measured in the same run (a memcpy of
// a 1 GiB buffer, read + write bytes counted). Prints one JSON object.
//   bench_offload_update [--elements N (default 64M)] [--tensors K (4)] [--device cpu|cuda] [--iters 5]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "bench/kd_bench_common.h"
#include "minipuzzle/distill.h"
#include "minipuzzle/json.h"

using namespace mp;

namespace {

double copy_bandwidth_bytes_per_s() {
  const size_t n = size_t(1) << 30;
  std::vector<char> a(n, 1), b(n, 0);
  const auto t = kd_bench::time_cpu(1, 3, [&] {
    at::parallel_for(0, int64_t(n), int64_t(1) << 22, [&](int64_t begin, int64_t end) {
      std::memcpy(b.data() + begin, a.data() + begin, size_t(end - begin));
    });
  });
  return 2.0 * double(n) / (t.median_ms / 1e3);
}

std::map<std::string, at::Tensor> make_params(int64_t elements, int tensors, c10::Device device) {
  std::map<std::string, at::Tensor> params;
  at::Generator gen = at::detail::createCPUGenerator(7);
  for (int k = 0; k < tensors; ++k) {
    at::Tensor p = at::randn({elements / tensors}, gen, at::kFloat).to(at::kBFloat16).to(device).view({-1, 1024});
    p.mutable_grad() = at::randn({elements / tensors}, gen, at::kFloat).to(at::kBFloat16).to(device).view({-1, 1024});
    params["layers." + std::to_string(k) + ".weight"] = p;
  }
  return params;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t elements = int64_t(64) << 20;
  int tensors = 4, iters = 5;
  std::string device_name = "cpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--elements") elements = std::stoll(argv[i + 1]);
    else if (a == "--tensors") tensors = std::stoi(argv[i + 1]);
    else if (a == "--device") device_name = argv[i + 1];
    else if (a == "--iters") iters = std::stoi(argv[i + 1]);
    else { std::cerr << "unknown argument " << a << "\n"; return 2; }
  }
  const c10::Device device(device_name);
  elements = elements / (int64_t(tensors) * 1024) * int64_t(tensors) * 1024;
  const double bandwidth = copy_bandwidth_bytes_per_s();

  json out{{"bench", "offload_update"}, {"device", device_name}, {"elements", elements}, {"tensors", tensors},
           {"threads", at::get_num_threads()}, {"host_copy_bandwidth_gb_s", bandwidth / 1e9},
           {"limit_ms", 28.0 * double(elements) / bandwidth * 1e3}};
  for (const double fraction : {1.0, 0.0}) {
    if (fraction == 0.0 && !device.is_cpu()) continue;  // a resident GPU update is not a host update
    auto params = make_params(elements, tensors, device);
    distill::AdamW opt(params, distill::AdamWOptions{}, fraction);
    std::vector<double> host_ms;
    const auto t = kd_bench::time_cpu(1, iters, [&] {
      opt.step(1e-4);
      host_ms.push_back(opt.last_host_seconds() * 1e3);
    });
    const std::string key = fraction == 1.0 ? "offloaded" : "resident";
    out[key] = json{{"step_median_ms", t.median_ms}, {"step_min_ms", t.min_ms},
                     {"host_update_last_ms", host_ms.back()},
                     {"ns_per_parameter", t.median_ms * 1e6 / double(elements)}};
  }
  out["offloaded_over_limit"] = out["offloaded"]["step_median_ms"].get<double>() / out["limit_ms"].get<double>();
  if (out.contains("resident"))
    out["offloaded_over_resident"] =
        out["offloaded"]["step_median_ms"].get<double>() / out["resident"]["step_median_ms"].get<double>();
  std::cout << out.dump() << std::endl;
  return 0;
}
