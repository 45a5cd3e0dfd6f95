#include "kernels/cuda/muon.h"

#include <cstdint>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/state_codec.cuh"
#include "kernels/muon.h"

namespace moe::cuda {
namespace {

using internal::GridFor;
using internal::kThreads;
using internal::WarpSumD;

constexpr int kNormThreads = 1024;

// Element i of `batch` (rows, cols) matrices, as stored -> its place in the workspace: matrix m
// at m * stride, in the wide orientation (transposed to (cols, rows) when rows > cols).
__device__ __forceinline__ int64_t WideIndex(int64_t i, int rows, int cols, bool tall, int64_t stride) {
  const int64_t size = int64_t{rows} * cols;
  const int64_t m = i / size, rem = i % size;
  if (!tall) return m * stride + rem;
  const int64_t row = rem / cols, col = rem % cols;
  return m * stride + col * rows + row;
}

// x (wide) = the matrices of src, or with grad given Muon's Nesterov input from the momentum:
// M = mu M + s G ; U = s G + mu M.
__global__ void LoadKernel(float* x, const float* src, const float* grad, float* momentum, int64_t n, int rows,
                           int cols, bool tall, int64_t stride, float mu, float grad_scale) {
  MOE_GRID_STRIDE(i, n) {
    float u;
    if (grad != nullptr) {  // the CPU's order of operations, no fused multiply-adds
      const float g = __fmul_rn(grad[i], grad_scale);
      const float m = __fadd_rn(__fmul_rn(mu, momentum[i]), g);
      momentum[i] = m;
      u = __fadd_rn(g, __fmul_rn(mu, m));
    } else {
      u = src[i];
    }
    x[WideIndex(i, rows, cols, tall, stride)] = u;
  }
}

// LoadKernel's momentum path with the momentum stored compact (bf16 or int8): one thread block
// per state block, as the AdamW kernels; the CPU's order of operations.
template <kernels::StateFormat F>
__global__ void __launch_bounds__(internal::kStateThreads)
    LoadStoredKernel(float* x, const float* grad, StateRef momentum, int64_t n, int rows, int cols, bool tall,
                     int64_t stride, float mu, float grad_scale) {
  constexpr bool kInt8 = F == kernels::StateFormat::kInt8;
  __shared__ float code[kernels::kInt8CodeSize], max_scratch[internal::kStateThreads / 32];
  if constexpr (kInt8) internal::LoadCode(code, momentum.code);
  uint8_t* q = static_cast<uint8_t*>(momentum.values);
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kernels::kStateBlock;
  const float scale = kInt8 ? momentum.scales[blockIdx.x] : 0.f;
  float mk[internal::kStatePerThread];
  float absmax = 0.f;
#pragma unroll
  for (int k = 0; k < internal::kStatePerThread; ++k) {
    const int64_t i = begin + k * internal::kStateThreads + threadIdx.x;
    mk[k] = 0.f;
    if (i >= n) continue;
    float m = kInt8 ? internal::DecodeInt8(code, q[i], scale) : internal::LoadState<kernels::StateFormat::kBf16>(momentum, i);
    const float g = __fmul_rn(grad[i], grad_scale);
    m = __fadd_rn(__fmul_rn(mu, m), g);
    x[WideIndex(i, rows, cols, tall, stride)] = __fadd_rn(g, __fmul_rn(mu, m));
    if constexpr (kInt8) {
      mk[k] = m;
      absmax = fmaxf(absmax, fabsf(m));
    } else {
      internal::StoreState<kernels::StateFormat::kBf16>(momentum, i, m);
    }
  }
  if constexpr (kInt8) {
    absmax = internal::BlockMax(absmax, max_scratch);
#pragma unroll
    for (int k = 0; k < internal::kStatePerThread; ++k) {
      const int64_t i = begin + k * internal::kStateThreads + threadIdx.x;
      if (i < n) q[i] = internal::EncodeInt8(code, mk[k], absmax);
    }
    if (threadIdx.x == 0) momentum.scales[blockIdx.x] = absmax;
  }
}

// norms[m] = sum of x^2 over matrix m (one block per matrix, a fixed order: deterministic).
__global__ void SquaredNormsKernel(double* norms, const float* x, int64_t size, int64_t stride) {
  const float* mat = x + blockIdx.x * stride;
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) acc += double{mat[i]} * mat[i];
  acc = WarpSumD(acc);
  __shared__ double warp_sums[kNormThreads / 32];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < blockDim.x / 32; ++w) total += warp_sums[w];
    norms[blockIdx.x] = total;
  }
}

// x = x / (||x||_F + eps) per matrix, as kernels::NewtonSchulz rounds it; and its operand copy.
// n: the batch's elements without the padding.
template <typename T>
__global__ void NormaliseKernel(float* x, T* x_op, const double* norms, int64_t size, int64_t stride, int64_t n) {
  MOE_GRID_STRIDE(i, n) {
    const int64_t m = i / size, at = m * stride + i % size;
    const float denom = static_cast<float>(sqrt(norms[m])) + kernels::kMuonNormEps;
    const float v = x[at] / denom;
    x[at] = v;
    x_op[at] = static_cast<T>(v);
  }
}

template <typename T>
__global__ void CopyKernel(T* out, const float* in, int64_t n) {
  MOE_GRID_STRIDE(i, n) { out[i] = static_cast<T>(in[i]); }
}

// dst (as stored) = x (wide).
__global__ void StoreKernel(float* dst, const float* x, int64_t n, int rows, int cols, bool tall, int64_t stride) {
  MOE_GRID_STRIDE(i, n) { dst[i] = x[WideIndex(i, rows, cols, tall, stride)]; }
}

// W = W decay - step X (the CPU's order of operations), stored as w says.
__global__ void UpdateKernel(WeightsRef w, const float* x, int64_t n, int rows, int cols, bool tall, int64_t stride,
                             float decay, float step) {
  MOE_GRID_STRIDE(i, n) {
    const float p = internal::LoadWeight(w, i);
    const float u = x[WideIndex(i, rows, cols, tall, stride)];
    internal::StoreWeight(w, i, __fsub_rn(__fmul_rn(p, decay), __fmul_rn(step, u)));
  }
}

// out (n) = in as the product type.
void ToOperand(void* out, const float* in, int64_t n, DType type, cudaStream_t stream) {
  if (type == DType::kBF16) {
    CopyKernel<<<GridFor(n), kThreads, 0, stream>>>(static_cast<bf16*>(out), in, n);
  } else {
    CopyKernel<<<GridFor(n), kThreads, 0, stream>>>(static_cast<float*>(out), in, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

// ws.x holds `batch` wide (r, c) matrices, r <= c, MuonWorkspace::Stride apart: normalise,
// then five X = a X + (b A + c A A) X with A = X X^T, each product one strided-batch call.
void OrthogonaliseWide(Blas* blas, const MuonWorkspace& ws, DType type, int64_t batch, int r, int c,
                       cudaStream_t stream) {
  const int64_t rc = int64_t{r} * c, rr = int64_t{r} * r, n = batch * rc;
  const int64_t sx = MuonWorkspace::Stride(rc), sg = MuonWorkspace::Stride(rr);
  SquaredNormsKernel<<<static_cast<unsigned>(batch), kNormThreads, 0, stream>>>(ws.norms, ws.x, rc, sx);
  MOE_CUDA_LAUNCH_CHECK();
  if (type == DType::kBF16) {
    NormaliseKernel<<<GridFor(n), kThreads, 0, stream>>>(ws.x, static_cast<bf16*>(ws.x_op), ws.norms, rc, sx, n);
  } else {
    NormaliseKernel<<<GridFor(n), kThreads, 0, stream>>>(ws.x, static_cast<float*>(ws.x_op), ws.norms, rc, sx, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
  const int b = static_cast<int>(batch);
  for (int it = 0; it < kernels::kNewtonSchulzSteps; ++it) {
    // A = X X^T
    blas->GemmBatched(false, true, r, r, c, 1.0f, ws.x_op, c, sx, ws.x_op, c, sx, 0.0f, ws.gram, r, sg, b, type,
                      DType::kF32, stream);
    ToOperand(ws.gram_op, ws.gram, batch * sg, type, stream);
    // A <- c A A + b A
    blas->GemmBatched(false, false, r, r, r, kernels::kNewtonSchulzC, ws.gram_op, r, sg, ws.gram_op, r, sg,
                      kernels::kNewtonSchulzB, ws.gram, r, sg, b, type, DType::kF32, stream);
    ToOperand(ws.gram_op, ws.gram, batch * sg, type, stream);
    // X <- (b A + c A A) X + a X
    blas->GemmBatched(false, false, r, c, r, 1.0f, ws.gram_op, r, sg, ws.x_op, c, sx, kernels::kNewtonSchulzA, ws.x,
                      c, sx, b, type, DType::kF32, stream);
    ToOperand(ws.x_op, ws.x, batch * sx, type, stream);
  }
}

}  // namespace

void NewtonSchulz(Blas* blas, const MuonWorkspace& ws, DType type, float* x, int64_t batch, int rows, int cols,
                  cudaStream_t stream) {
  const int64_t n = batch * rows * cols;
  if (n == 0) return;
  const bool tall = rows > cols;
  const int64_t stride = MuonWorkspace::Stride(int64_t{rows} * cols);
  LoadKernel<<<GridFor(n), kThreads, 0, stream>>>(ws.x, x, nullptr, nullptr, n, rows, cols, tall, stride, 0.f, 0.f);
  MOE_CUDA_LAUNCH_CHECK();
  OrthogonaliseWide(blas, ws, type, batch, tall ? cols : rows, tall ? rows : cols, stream);
  StoreKernel<<<GridFor(n), kThreads, 0, stream>>>(x, ws.x, n, rows, cols, tall, stride);
  MOE_CUDA_LAUNCH_CHECK();
}

void MuonUpdate(Blas* blas, const MuonWorkspace& ws, DType type, float* param, bf16* param_bf16, const float* grad,
                float* momentum, int64_t batch, int rows, int cols, float lr, float weight_decay, float grad_scale,
                cudaStream_t stream) {
  WeightsRef w;
  w.f32 = param;
  w.b16 = param_bf16;
  StateRef m;
  m.values = momentum;
  MuonUpdate(blas, ws, type, w, grad, m, batch, rows, cols, lr, weight_decay, grad_scale, stream);
}

void MuonUpdate(Blas* blas, const MuonWorkspace& ws, DType type, const WeightsRef& w, const float* grad,
                const StateRef& momentum, int64_t batch, int rows, int cols, float lr, float weight_decay,
                float grad_scale, cudaStream_t stream) {
  const int64_t n = batch * rows * cols;
  if (n == 0) return;
  const bool tall = rows > cols;
  const int64_t stride = MuonWorkspace::Stride(int64_t{rows} * cols);
  const float mu = kernels::kMuonMomentum;
  const unsigned state_blocks = static_cast<unsigned>((n + kernels::kStateBlock - 1) / kernels::kStateBlock);
  switch (momentum.format) {
    case kernels::StateFormat::kFp32:
      LoadKernel<<<GridFor(n), kThreads, 0, stream>>>(ws.x, nullptr, grad, static_cast<float*>(momentum.values), n,
                                                      rows, cols, tall, stride, mu, grad_scale);
      break;
    case kernels::StateFormat::kBf16:
      LoadStoredKernel<kernels::StateFormat::kBf16><<<state_blocks, internal::kStateThreads, 0, stream>>>(
          ws.x, grad, momentum, n, rows, cols, tall, stride, mu, grad_scale);
      break;
    case kernels::StateFormat::kInt8:
      LoadStoredKernel<kernels::StateFormat::kInt8><<<state_blocks, internal::kStateThreads, 0, stream>>>(
          ws.x, grad, momentum, n, rows, cols, tall, stride, mu, grad_scale);
      break;
  }
  MOE_CUDA_LAUNCH_CHECK();
  OrthogonaliseWide(blas, ws, type, batch, tall ? cols : rows, tall ? rows : cols, stream);
  // The CPU's rounding: decay = 1 - lr wd and step = lr * scale, each one float.
  const float decay = 1.0f - lr * weight_decay;
  const float step = lr * kernels::MuonScale(rows, cols);
  UpdateKernel<<<GridFor(n), kThreads, 0, stream>>>(w, ws.x, n, rows, cols, tall, stride, decay, step);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
