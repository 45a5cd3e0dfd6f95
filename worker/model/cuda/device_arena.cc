#include "worker/model/cuda/device_arena.h"

#ifdef MOE_WITH_CUDA

#include <cuda.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/model_stats.h"
#include "kernels/cuda/common.h"
#include "kernels/state_codec.h"
#include "worker/model/allocation_error.h"

namespace moe {
namespace {

constexpr int64_t kAlign = 256;

int64_t RoundUp(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// cuMemAddressReserve / cuMemAddressFree through the runtime's driver entry points: the worker
// links the CUDA runtime only, so that it still loads where no driver library is installed.
using ReserveFn = CUresult (*)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long);
using FreeFn = CUresult (*)(CUdeviceptr, size_t);

template <typename Fn>
Fn DriverEntry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  MOE_CUDA_CHECK(cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
    throw std::runtime_error(std::string("the CUDA driver has no ") + name);
  }
  return reinterpret_cast<Fn>(fn);
}

constexpr size_t kReserveGranularity = size_t{2} << 20;

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

ReservedRange::ReservedRange(int64_t floats) {
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(floats, 1)) * sizeof(float);
  bytes_ = (bytes + kReserveGranularity - 1) / kReserveGranularity * kReserveGranularity;
  CUdeviceptr base = 0;
  const CUresult r = DriverEntry<ReserveFn>("cuMemAddressReserve")(&base, bytes_, 0, 0, 0);
  if (r != CUDA_SUCCESS) {
    throw std::runtime_error("cuMemAddressReserve of " + std::to_string(bytes_) + " bytes failed (" +
                             std::to_string(static_cast<int>(r)) + ")");
  }
  base_ = reinterpret_cast<float*>(base);
}

ReservedRange::~ReservedRange() {
  DriverEntry<FreeFn>("cuMemAddressFree")(reinterpret_cast<CUdeviceptr>(base_), bytes_);
}

Fp32Tensors::Fp32Tensors(const ParamLayout& layout, const std::function<bool(const ParamInfo&)>& in_fp32,
                         DeviceArena* arena) {
  auto padded = [](int64_t n) { return (n + 63) / 64 * 64; };  // 256 bytes
  for (const ParamInfo& info : layout.params()) {
    if (in_fp32(info)) size_ += padded(info.size);
  }
  base_ = arena->Alloc<float>(size_);
  float* next = base_;
  for (const ParamInfo& info : layout.params()) {
    if (!in_fp32(info)) continue;
    by_offset_[info.offset] = next;
    next += padded(info.size);
  }
}

float* Fp32Tensors::at(const ParamInfo& info) const {
  auto it = by_offset_.find(info.offset);
  return it != by_offset_.end() ? it->second : nullptr;
}

void Fp32Tensors::Redirect(ModelTensors* t, const float* handles) const {
  auto redirect = [&](float*& p) {
    if (p == nullptr) return;
    auto it = by_offset_.find(p - handles);
    if (it != by_offset_.end()) p = it->second;
  };
  redirect(t->wte);
  redirect(t->lm_head);
  redirect(t->final_norm);
  for (BlockTensors& b : t->blocks) {
    for (float** p : {&b.attn_norm, &b.wqkv, &b.wo, &b.moe_norm, &b.router, &b.w1, &b.w3, &b.w2, &b.q_norm, &b.k_norm,
                      &b.wg, &b.shared_w1, &b.shared_w3, &b.shared_w2}) {
      redirect(*p);
    }
  }
}

void DownloadBf16(float* host, const cuda::bf16* device, int64_t n, cudaStream_t stream) {
  std::vector<uint16_t> bits(n);
  MOE_CUDA_CHECK(cudaMemcpyAsync(bits.data(), device, sizeof(uint16_t) * n, cudaMemcpyDeviceToHost, stream));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (int64_t i = 0; i < n; ++i) host[i] = kernels::FromBf16Bits(bits[i]);
}

void UploadAsBf16(cuda::bf16* device, const float* host, int64_t n, cudaStream_t stream) {
  std::vector<uint16_t> bits(n);
  for (int64_t i = 0; i < n; ++i) bits[i] = kernels::Bf16Bits(host[i]);
  MOE_CUDA_CHECK(cudaMemcpyAsync(device, bits.data(), sizeof(uint16_t) * n, cudaMemcpyHostToDevice, stream));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));  // `bits` goes out of scope
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
