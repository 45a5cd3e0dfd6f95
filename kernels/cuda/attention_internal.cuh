// What the attention .cu files share and callers never see: the dropout draw inside the kernels,
// and each path's launchers by head size (attention.cu picks the path, the files pick the
// padded head size they are built for).
#pragma once

#include <cstdint>

#include "common/backend_limits.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/device.cuh"
#include "kernels/dropout.h"

namespace moe::cuda::internal {

// AttentionDropout as the kernels take it (by value): the seed mixed once, the scale formed once.
struct AttnDrop {
  float p = 0.0f;  // 0: off
  float scale = 1.0f;
  uint64_t mixed_seed = 0;
  uint64_t first_token = 0;

  // The factor of probability (query i -> key j) of head `head` in sequence bi: 0 (dropped) or
  // 1 / (1 - p), from the same counter as the CPU's kernels/attention.cc.
  __device__ __forceinline__ float Factor(int bi, int i, int head, int h, int t, int j) const {
    const uint64_t query =
        first_token + static_cast<uint64_t>(bi) * static_cast<uint64_t>(t) + static_cast<uint64_t>(i);
    const uint64_t counter = kernels::AttentionDropoutCounter(query, head, h, t, j);
    return CounterUniformMixed(mixed_seed, counter) >= p ? scale : 0.0f;
  }
};

inline AttnDrop MakeAttnDrop(const AttentionDropout& d) {
  AttnDrop a;
  if (d.p > 0.0f) {
    a.p = d.p;
    a.scale = 1.0f / (1.0f - d.p);
    a.mixed_seed = SplitMix64(d.seed);
    a.first_token = static_cast<uint64_t>(d.first_token);
  }
  return a;
}

// fp32 SIMT (attention_fp32.cu): any hd that is a multiple of 8 up to 256. dsum (b, h, t) =
// rowsum(dout * out), made by the caller.
void SimtForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd, const AttnDrop& drop,
                 cudaStream_t stream);
void SimtBackward(float* dqkv, const float* dout, const float* lse, const float* dsum, const float* qkv, int b, int t,
                  int h, int hkv, int hd, const AttnDrop& drop, cudaStream_t stream);

// Tensor cores (attention_tc.cu): hd a multiple of 8 from 16 to 256; every row start 16-byte
// aligned (the caller checks the buffers).
inline bool TcRunsHeadSize(int hd) { return CudaAttentionOnTensorCores(hd); }
// out16 (may be null): out in bf16 as well, each value rounded from the fp32 one.
void TcForward(float* out, bf16* out16, float* lse, const bf16* qkv16, int b, int t, int h, int hkv, int hd,
               const AttnDrop& drop, cudaStream_t stream);
// RoPE's backward in the backward's stores: with dqkv16 set, dq and dk rotated back by the
// angles of their rows' positions (cos_t, sin_t: (t, hd / 2), kernels::RopeTables) and rounded, dv
// rounded, into dqkv16 in place of the fp32 dqkv: the bits RopeBackwardToBf16 of dqkv gives.
struct RopeBack {
  bf16* dqkv16 = nullptr;
  const float* cos_t = nullptr;
  const float* sin_t = nullptr;
};
// Whether the kernels for head size hd store through RopeBack: those built for hd itself (16, 32,
// 64, 96, 128; the pairs (c, c + hd / 2) in one thread's registers) whose dk/dv is not split into
// column halves.
constexpr bool TcRopesInStores(int hd) { return hd == 16 || hd == 32 || hd == 64 || hd == 96 || hd == 128; }
// TcBackward adds to dqkv, or with `overwrite` writes it (every element has one writer: no
// clearing beforehand). With rope.dqkv16 set (overwrite only, TcRopesInStores(hd)) it writes
// dqkv16 instead and leaves dqkv as it is.
void TcBackward(float* dqkv, const bf16* dout16, const float* lse, const float* dsum, const bf16* qkv16, int b, int t,
                int h, int hkv, int hd, const AttnDrop& drop, bool overwrite, const RopeBack& rope,
                cudaStream_t stream);

}  // namespace moe::cuda::internal
