#include "kernels/cuda/state_codec.h"

#include <vector>

#include "kernels/cuda/state_codec.cuh"

namespace moe::cuda {
namespace {

using internal::GridFor;
using internal::kStatePerThread;
using internal::kStateThreads;
using internal::kThreads;
using kernels::StateFormat;

// kernels::AdamWUpdate for one element, in its order of operations, every step rounded.
__device__ __forceinline__ void AdamWExact(float& p, float g, float& m, float& v, const AdamWArgs& a) {
  const float gi = __fmul_rn(g, a.grad_scale);
  m = __fadd_rn(__fmul_rn(a.beta1, m), __fmul_rn(__fsub_rn(1.0f, a.beta1), gi));
  v = __fadd_rn(__fmul_rn(a.beta2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, a.beta2), gi), gi));
  const float m_hat = __fdiv_rn(m, a.bc1);
  const float v_hat = __fdiv_rn(v, a.bc2);
  const float update = __fadd_rn(__fdiv_rn(m_hat, __fadd_rn(__fsqrt_rn(v_hat), a.eps)), __fmul_rn(a.weight_decay, p));
  p = __fsub_rn(p, __fmul_rn(a.lr, update));
}

// fp32 or bf16 moments: element by element.
template <StateFormat F>
__global__ void AdamWElementKernel(WeightsRef w, GradRef grad, StateRef m, StateRef v, int64_t n, AdamWArgs a) {
  MOE_GRID_STRIDE(i, n) {
    float p = internal::LoadWeight(w, i);
    float mi = internal::LoadState<F>(m, i), vi = internal::LoadState<F>(v, i);
    AdamWExact(p, grad[i], mi, vi, a);
    internal::StoreState<F>(m, i, mi);
    internal::StoreState<F>(v, i, vi);
    internal::StoreWeight(w, i, p);
  }
}

// int8 moments: one thread block per state block (the tensor's values [b * kStateBlock, ...)):
// decode with the old scales, update, then encode against the block's new largest |m| and |v|.
__global__ void __launch_bounds__(kStateThreads)
    AdamWInt8Kernel(WeightsRef w, GradRef grad, StateRef m, StateRef v, int64_t n, AdamWArgs a) {
  __shared__ float code_m[kernels::kInt8CodeSize], code_v[kernels::kInt8CodeSize];
  __shared__ float max_m[kStateThreads / 32], max_v[kStateThreads / 32];
  internal::LoadCode(code_m, m.code);
  internal::LoadCode(code_v, v.code);
  uint8_t* qm = static_cast<uint8_t*>(m.values);
  uint8_t* qv = static_cast<uint8_t*>(v.values);
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kernels::kStateBlock;
  const float scale_m = m.scales[blockIdx.x], scale_v = v.scales[blockIdx.x];
  float mk[kStatePerThread], vk[kStatePerThread];
  float abs_m = 0.f, abs_v = 0.f;
#pragma unroll
  for (int k = 0; k < kStatePerThread; ++k) {
    const int64_t i = begin + k * kStateThreads + threadIdx.x;
    mk[k] = 0.f;
    vk[k] = 0.f;
    if (i < n) {
      float p = internal::LoadWeight(w, i);
      mk[k] = internal::DecodeInt8(code_m, qm[i], scale_m);
      vk[k] = internal::DecodeInt8(code_v, qv[i], scale_v);
      AdamWExact(p, grad[i], mk[k], vk[k], a);
      internal::StoreWeight(w, i, p);
      abs_m = fmaxf(abs_m, fabsf(mk[k]));
      abs_v = fmaxf(abs_v, fabsf(vk[k]));
    }
  }
  abs_m = internal::BlockMax(abs_m, max_m);
  abs_v = internal::BlockMax(abs_v, max_v);
#pragma unroll
  for (int k = 0; k < kStatePerThread; ++k) {
    const int64_t i = begin + k * kStateThreads + threadIdx.x;
    if (i < n) {
      qm[i] = internal::EncodeInt8(code_m, mk[k], abs_m);
      qv[i] = internal::EncodeInt8(code_v, vk[k], abs_v);
    }
  }
  if (threadIdx.x == 0) {
    m.scales[blockIdx.x] = abs_m;
    v.scales[blockIdx.x] = abs_v;
  }
}

__global__ void Bf16ToFloatKernel(float* out, const bf16* in, int64_t n) {
  MOE_GRID_STRIDE(i, n) { out[i] = __bfloat162float(in[i]); }
}

}  // namespace

void UploadInt8Codes(float* dst, cudaStream_t stream) {
  std::vector<float> both = kernels::Int8Code(true);
  const std::vector<float>& unsigned_code = kernels::Int8Code(false);
  both.insert(both.end(), unsigned_code.begin(), unsigned_code.end());
  MOE_CUDA_CHECK(cudaMemcpyAsync(dst, both.data(), sizeof(float) * both.size(), cudaMemcpyHostToDevice, stream));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));  // `both` goes out of scope
}

void AdamWUpdate(const WeightsRef& w, GradRef grad, const StateRef& m, const StateRef& v, int64_t n,
                 const AdamWArgs& args, cudaStream_t stream) {
  if (n <= 0) return;
  switch (m.format) {
    case StateFormat::kFp32:
      AdamWElementKernel<StateFormat::kFp32><<<GridFor(n), kThreads, 0, stream>>>(w, grad, m, v, n, args);
      break;
    case StateFormat::kBf16:
      AdamWElementKernel<StateFormat::kBf16><<<GridFor(n), kThreads, 0, stream>>>(w, grad, m, v, n, args);
      break;
    case StateFormat::kInt8: {
      const int64_t blocks = (n + kernels::kStateBlock - 1) / kernels::kStateBlock;
      AdamWInt8Kernel<<<static_cast<unsigned>(blocks), kStateThreads, 0, stream>>>(w, grad, m, v, n, args);
      break;
    }
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void Bf16ToFloat(float* out, const bf16* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  Bf16ToFloatKernel<<<GridFor(n), kThreads, 0, stream>>>(out, in, n);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
