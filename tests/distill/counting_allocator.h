// A counting CPU allocator for tests that measure what ATen allocates (tests/distill): every byte allocated on
// the CPU goes through it once instance() has been called.
#pragma once
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

namespace mp::test {

// Wraps the CPU allocator and counts live bytes and their peak. Its data pointers are "simple" (context ==
// data, one raw deleter), as ATen's raw_allocate requires: sizes are looked up by address when freed.
class CountingAllocator final : public c10::Allocator {
 public:
  static CountingAllocator& instance() {
    static CountingAllocator* a = [] {
      auto* alloc = new CountingAllocator(c10::GetCPUAllocator());  // never freed: it frees what it allocated
      c10::SetCPUAllocator(alloc, /*priority=*/100);
      return alloc;
    }();
    return *a;
  }
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    if (inner.get_context() != data) throw std::logic_error("the CPU allocator's data pointers are not simple");
    base_deleter_ = inner.get_deleter();
    const c10::Device device = inner.device();
    inner.release_context();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[data] = int64_t(n);
      live_ += int64_t(n);
      peak_ = std::max(peak_, live_);
    }
    return {data, data, &release, device};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, size_t count) const override { std::memcpy(dest, src, count); }
  int64_t live() {
    std::lock_guard<std::mutex> lock(mutex_);
    return live_;
  }
  int64_t peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }
  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    peak_ = live_;
  }

 private:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}
  static void release(void* data) {
    CountingAllocator& a = instance();
    {
      std::lock_guard<std::mutex> lock(a.mutex_);
      auto it = a.sizes_.find(data);
      if (it != a.sizes_.end()) {
        a.live_ -= it->second;
        a.sizes_.erase(it);
      }
    }
    a.base_deleter_(data);
  }
  c10::Allocator* base_;
  c10::DeleterFnPtr base_deleter_ = nullptr;
  std::mutex mutex_;
  std::unordered_map<void*, int64_t> sizes_;
  int64_t live_ = 0, peak_ = 0;
};

CountingAllocator& counting_allocator() { return CountingAllocator::instance(); }

}  // namespace mp::test
