// Shared pieces of the KD benchmarks (bench_kd_loss.cpp, bench_linear_kd.cpp): CUDA-event timing (median after
// warm-up, with an untimed preparation step per run), caching-allocator memory accounting, and the
// device-to-device copy bandwidth used as the practical HBM limit.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace kd_bench {

// --name value from argv, or the default.
inline int64_t arg_int(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoll(argv[i + 1]);
  return fallback;
}

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
  int iterations = 0;
};

inline Timing summarize(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  Timing r;
  r.iterations = int(t.size());
  r.median_ms = t[t.size() / 2];
  r.min_ms = t.front();
  r.max_ms = t.back();
  return r;
}

// CPU wall clock (the CPU fallback of the benchmarks).
inline Timing time_cpu(int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return summarize(t);
}

#ifdef MINIPUZZLE_WITH_CUDA
inline bool have_cuda_device() { return c10::cuda::device_count() > 0; }

// CUDA events on the current stream around fn(); prepare() runs before each run, outside the timed region.
// Times several functions with their iterations interleaved (a, b, c, a, b, c, ...), so that clock and thermal
// drift over the run (sustained GEMMs lower an H100's clock) falls on all of them alike and the ratios of their
// medians compare like with like.
inline std::vector<Timing> time_cuda_interleaved(int warmup, int iters, const std::vector<std::function<void()>>& fns) {
  for (int i = 0; i < warmup; ++i)
    for (const auto& fn : fns) fn();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<std::vector<double>> t(fns.size());
  for (int i = 0; i < iters; ++i)
    for (size_t f = 0; f < fns.size(); ++f) {
      cudaEventRecord(start, stream);
      fns[f]();
      cudaEventRecord(stop, stream);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      t[f].push_back(ms);
    }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::vector<Timing> out;
  for (auto& times : t) out.push_back(summarize(times));
  return out;
}

inline Timing time_cuda(int warmup, int iters, const std::function<void()>& fn,
                        const std::function<void()>& prepare = {}) {
  for (int i = 0; i < warmup; ++i) {
    if (prepare) prepare();
    fn();
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    if (prepare) prepare();
    cudaEventRecord(start, stream);
    fn();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    t.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return summarize(t);
}

// Bytes allocated through the caching allocator now, and the peak since the last reset.
inline int64_t allocated_now() {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device()).allocated_bytes[0].current;
}
inline int64_t allocated_peak() {
  return c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device()).allocated_bytes[0].peak;
}
inline void reset_peak() {
  c10::cuda::device_synchronize();
  c10::cuda::CUDACachingAllocator::resetPeakStats(c10::cuda::current_device());
}

// Peak bytes allocated by one run of fn() beyond what was allocated before it, minus `kept_bytes` (the outputs
// the caller keeps, e.g. gradients): the "extra" memory of an implementation.
inline int64_t extra_bytes(const std::function<void()>& fn, int64_t kept_bytes = 0) {
  c10::cuda::device_synchronize();
  const int64_t before = allocated_now();
  reset_peak();
  fn();
  c10::cuda::device_synchronize();
  return allocated_peak() - before - kept_bytes;
}

// Read + write bandwidth of a device-to-device copy of `bytes` (the practical HBM limit), in bytes per second.
inline double copy_bandwidth(int64_t bytes) {
  const at::Tensor a = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
  at::Tensor b = at::empty_like(a);
  const Timing t = time_cuda(3, 10, [&] { b.copy_(a); });
  return 2.0 * double(bytes) / (t.median_ms * 1e-3);
}

inline std::string device_name() {
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, c10::cuda::current_device());
  return prop.name;
}
#else
inline bool have_cuda_device() { return false; }
#endif

inline double mib(int64_t bytes) { return double(bytes) / double(1 << 20); }

}  // namespace kd_bench
