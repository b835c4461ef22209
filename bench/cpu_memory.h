// Peak CPU tensor memory: an allocator that wraps ATen's CPU allocator and counts the bytes of live tensors, so a
// test or benchmark can state "peak allocated bytes" on a machine without a GPU (what the CUDA caching allocator's
// max_memory_allocated reports on a GPU). Counts ATen's allocations only (not MKL's or OpenMP's own buffers).
#pragma once
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstring>

namespace mp::bench {

class CountingCpuAllocator : public c10::Allocator {
 public:
  // Installs itself as ATen's CPU allocator until destroyed. One at a time.
  CountingCpuAllocator() : base_(c10::GetCPUAllocator()) {
    reset_peak();
    c10::SetCPUAllocator(this, kPriority);
  }
  ~CountingCpuAllocator() override { c10::SetCPUAllocator(base_, kPriority); }
  CountingCpuAllocator(const CountingCpuAllocator&) = delete;
  CountingCpuAllocator& operator=(const CountingCpuAllocator&) = delete;

  // Each block carries its size in a 64-byte header before the data (data stays 64-byte aligned), so that the
  // deleter is a plain function of the data pointer: ATen's raw_allocate (used by convolutions) requires that.
  c10::DataPtr allocate(size_t n) override {
    void* data = allocate_raw(n);
    return {data, data, &release, c10::Device(c10::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

  int64_t live_bytes() const { return live_.load(); }
  int64_t peak_bytes() const { return peak_.load(); }
  void reset_peak() { peak_.store(live_.load()); }

 private:
  static constexpr uint8_t kPriority = 100;  // above ATen's default registration
  static constexpr size_t kHeader = 64;
  static void* allocate_raw(size_t n) {
    char* base = static_cast<char*>(c10::alloc_cpu(n + kHeader));
    *reinterpret_cast<size_t*>(base) = n;
    const int64_t now = live_.fetch_add(int64_t(n)) + int64_t(n);
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    return base + kHeader;
  }
  static void release(void* data) {
    if (!data) return;
    char* base = static_cast<char*>(data) - kHeader;
    live_.fetch_sub(int64_t(*reinterpret_cast<size_t*>(base)));
    c10::free_cpu(base);
  }
  c10::Allocator* base_;
  // Static: a tensor allocated while counting may outlive the allocator object and still decrements on release.
  static inline std::atomic<int64_t> live_{0}, peak_{0};
};

}  // namespace mp::bench
