#include "worker/model/cuda/device_arena.h"

#ifdef MOE_WITH_CUDA

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/model_stats.h"
#include "kernels/cuda/common.h"
#include "worker/model/allocation_error.h"

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
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    // Out of memory is the job's size, not a bug: said in words, not an abort.
    cudaGetLastError();
    int device = 0;
    size_t free_bytes = 0, total_bytes = 0;
    cudaGetDevice(&device);
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw AllocationError(absl::StrCat(
        "could not allocate ", FormatBytes(static_cast<double>(bytes)), " on GPU ", device, " (",
        FormatBytes(static_cast<double>(free_bytes)), " of ",
        FormatBytes(static_cast<double>(total_bytes)), " free) after ",
        FormatBytes(static_cast<double>(memory_->now)), " for the model"),
        AllocationError::Memory::kGpu, static_cast<int64_t>(total_bytes));
  }
  MOE_CUDA_CHECK(err);
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
