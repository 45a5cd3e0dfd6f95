// Device memory of the CUDA model. DeviceArena: cudaMalloc'd buffers freed together, counted in
// a DeviceMemory shared by all of a model's arenas (its peak is the model's peak allocation).
// BufferTable: the activation buffers listed once with their shapes, then carved out of one
// allocation (as llm.c sizes and points its activations), so that a reader finds every
// buffer's shape in one place.
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstddef>
#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/common.h"
#include "worker/model/param_layout.h"

namespace moe {

// Bytes a model holds on its device now, and the most it has held.
struct DeviceMemory {
  int64_t now = 0;
  int64_t peak = 0;
};

// Buffers listed by shape: Add(&ptr, count) records where the pointer goes and how many
// elements it has; DeviceArena::Allocate fills every pointer (null for a count of 0).
class BufferTable {
 public:
  template <typename T>
  void Add(T** ptr, int64_t count) {
    entries_.push_back({reinterpret_cast<void**>(ptr), static_cast<int64_t>(sizeof(T)) * count});
  }
  struct Entry {
    void** ptr;
    int64_t bytes;
  };
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  std::vector<Entry> entries_;
};

class DeviceArena {
 public:
  explicit DeviceArena(DeviceMemory* memory) : memory_(memory) {}
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  // `count` T, freed with the arena; null for count 0.
  template <typename T>
  T* Alloc(int64_t count) {
    return static_cast<T*>(AllocBytes(static_cast<int64_t>(sizeof(T)) * count));
  }
  // One allocation for the whole table, every buffer 256-byte aligned (as cudaMalloc's own).
  void Allocate(const BufferTable& table);
  void FreeAll();
  int64_t bytes() const { return bytes_; }

 private:
  void* AllocBytes(int64_t bytes);

  DeviceMemory* memory_;
  std::vector<void*> ptrs_;
  int64_t bytes_ = 0;
};

// An address range reserved and never mapped (cuMemAddressReserve): handles that name a
// tensor by its place in a flat fp32 buffer that does not exist, so that a stray fp32 read or
// write of it faults instead of touching other memory (DeviceWeights, DeviceGrads).
class ReservedRange {
 public:
  explicit ReservedRange(int64_t floats);
  ~ReservedRange();
  ReservedRange(const ReservedRange&) = delete;
  ReservedRange& operator=(const ReservedRange&) = delete;
  float* base() const { return base_; }

 private:
  float* base_ = nullptr;
  size_t bytes_ = 0;
};

// The fp32 tensors of a layout whose other tensors are bf16 behind a ReservedRange: one
// allocation, each tensor 256-byte aligned, found by layout offset (DeviceWeights' norm gains and routers, DeviceGrads' fp32 gradients).
class Fp32Tensors {
 public:
  Fp32Tensors() = default;
  // The tensors of `layout` that `in_fp32` picks, allocated from `arena`.
  Fp32Tensors(const ParamLayout& layout, const std::function<bool(const ParamInfo&)>& in_fp32, DeviceArena* arena);
  // Tensor `info`'s fp32 storage, or null when it is not one of them.
  float* at(const ParamInfo& info) const;
  float* base() const { return base_; }
  int64_t size() const { return size_; }  // floats, padding included
  // Every pointer of `t` into the range at `handles` that names one of these tensors, pointed at
  // its storage instead.
  void Redirect(ModelTensors* t, const float* handles) const;

 private:
  std::unordered_map<int64_t, float*> by_offset_;
  float* base_ = nullptr;
  int64_t size_ = 0;
};

// n values between the host (fp32) and a device's bf16 buffer, synchronous on `stream`: down
// exactly, up rounded to the nearest bf16 (DeviceWeights, DeviceGrads).
void DownloadBf16(float* host, const cuda::bf16* device, int64_t n, cudaStream_t stream);
void UploadAsBf16(cuda::bf16* device, const float* host, int64_t n, cudaStream_t stream);

}  // namespace moe

#endif  // MOE_WITH_CUDA
