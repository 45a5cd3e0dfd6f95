// What every CUDA op shares: error checks that abort the rank with host, file and line, the
// bf16 type, and whether this process can see a GPU. Plain C++ (no device code): worker/ and
// tests include it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

namespace moe::cuda {

using bf16 = __nv_bfloat16;

// A gradient as stored: fp32, or bf16 (train.master_weights bf16 keeps the blocks' matrices'
// gradients in bf16). Device code reads element i as fp32 with g[i].
struct GradRef {
  const float* f32 = nullptr;
  const bf16* b16 = nullptr;
  GradRef() = default;
  GradRef(const float* p) : f32(p) {}  // NOLINT(google-explicit-constructor): fp32, the usual case
  explicit GradRef(const bf16* p) : b16(p) {}
  __host__ __device__ bool null() const { return f32 == nullptr && b16 == nullptr; }
#ifdef __CUDACC__
  __device__ float operator[](int64_t i) const { return f32 != nullptr ? f32[i] : __bfloat162float(b16[i]); }
#endif
};

// Aborts with the host name, the failed expression, file:line and CUDA's error string.
void CheckCuda(cudaError_t err, const char* what, const char* file, int line);

// True when a CUDA device is present and usable (tests skip themselves otherwise).
bool HaveGpu();

// Dense FLOP/s of the current GPU, for MFU: the published bf16 peak of the parts MODEL.md
// names (989 TFLOP/s for H100 and H200 SXM), else SMs x maximum SM clock x FLOPs per SM per
// clock of its architecture (bf16 tensor cores when tensor_bf16, else fp32 FMA units). 0 for
// an architecture this table does not know.
double PeakDenseFlops(bool tensor_bf16);

// A non-blocking stream at one of three priorities, so that when streams share the SMs the
// block scheduler serves the gradient exchange first, then the model's forward and backward,
// and the optimizer's update overlapping the next forward (DeviceOptimizer) last:
//   kComm: the GPU's greatest priority; kCompute: one below it; kBackground: its least.
// MOE_STREAM_PRIORITY=0 gives every stream the default priority instead (an A/B switch).
enum class StreamPriority { kComm, kCompute, kBackground };
cudaStream_t NewStream(StreamPriority priority);

// True when every pointer is a multiple of `bytes`.
inline bool Aligned(int bytes, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
  }
  return true;
}

// Largest power of two (at most 256) that divides every one of `count` addresses: cuBLASLt
// picks algorithms by the alignment it is promised.
inline int CommonAlignment(const void* const* ptrs, size_t count) {
  uintptr_t bits = 256;
  for (size_t i = 0; i < count; ++i) bits |= reinterpret_cast<uintptr_t>(ptrs[i]);
  return static_cast<int>(bits & (~bits + 1));
}

// Blocks of `threads` threads covering n items.
inline unsigned BlocksFor(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace moe::cuda

#define MOE_CUDA_CHECK(expr) ::moe::cuda::CheckCuda((expr), #expr, __FILE__, __LINE__)
// After every launch: launch-configuration errors surface here, at their own line.
#define MOE_CUDA_LAUNCH_CHECK() \
  ::moe::cuda::CheckCuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
