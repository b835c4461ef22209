// Wall-clock timing of device work: synchronises CUDA before reading the clock (a no-op on CPU).
#pragma once
#include <algorithm>
#include <chrono>
#include <vector>

#ifdef MINIPUZZLE_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif
#include <c10/core/Device.h>

namespace mp::bench {

inline void synchronize(c10::Device device) {
#ifdef MINIPUZZLE_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#endif
}

// Median of `iters` timed runs of fn() after `warmup` untimed ones, in milliseconds.
template <typename Fn>
double time_ms(c10::Device device, int warmup, int iters, Fn&& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  synchronize(device);
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    auto start = std::chrono::steady_clock::now();
    fn();
    synchronize(device);
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace mp::bench
