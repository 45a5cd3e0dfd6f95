#include "worker/model/cuda/device_arena.h"

#ifdef MOE_WITH_CUDA

#include <algorithm>

#include "kernels/cuda/common.h"

namespace moe {
namespace {

constexpr int64_t kAlign = 256;

int64_t RoundUp(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

}  // namespace

DeviceArena::~DeviceArena() {
  for (void* p : ptrs_) cudaFree(p);
  memory_->now -= bytes_;
}

void* DeviceArena::AllocBytes(int64_t bytes) {
  if (bytes <= 0) return nullptr;
  void* p = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&p, bytes));
  ptrs_.push_back(p);
  bytes_ += bytes;
  memory_->now += bytes;
  memory_->peak = std::max(memory_->peak, memory_->now);
  return p;
}

void DeviceArena::Allocate(const BufferTable& table) {
  int64_t total = 0;
  for (const BufferTable::Entry& e : table.entries()) total += RoundUp(e.bytes);
  char* base = static_cast<char*>(AllocBytes(total));
  for (const BufferTable::Entry& e : table.entries()) {
    *e.ptr = e.bytes > 0 ? base : nullptr;
    base += RoundUp(e.bytes);
  }
}

void DeviceArena::FreeAll() {
  for (void* p : ptrs_) MOE_CUDA_CHECK(cudaFree(p));
  ptrs_.clear();
  memory_->now -= bytes_;
  bytes_ = 0;
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
