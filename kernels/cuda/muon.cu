#include "kernels/cuda/muon.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/state_codec.cuh"
#include "kernels/muon.h"

namespace moe::cuda {
namespace {

using internal::GridFor;
using internal::kThreads;
using internal::WarpSumD;

constexpr int kNormThreads = 256;

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
__global__ void LoadKernel(float* x, const float* src, GradRef grad, float* momentum, int64_t n, int rows,
                           int cols, bool tall, int64_t stride, float mu, float grad_scale) {
  MOE_GRID_STRIDE(i, n) {
    float u;
    if (!grad.null()) {  // the CPU's order of operations, no fused multiply-adds
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
    LoadStoredKernel(float* x, GradRef grad, StateRef momentum, int64_t n, int rows, int cols, bool tall,
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

// partials[m * chunks + k] = the sum of x^2 over elements [k, k + 1) * kMuonNormChunk of matrix m:
// block b sums chunk b % chunks of matrix b / chunks. A fixed order (no atomics): deterministic.
__global__ void __launch_bounds__(kNormThreads)
    PartialSquaresKernel(double* partials, const float* x, int64_t size, int64_t stride, int64_t chunks) {
  const int64_t m = blockIdx.x / chunks, k = blockIdx.x % chunks;
  const float* mat = x + m * stride;
  const int64_t begin = k * kernels::kMuonNormChunk;
  const int64_t end = size - begin < kernels::kMuonNormChunk ? size : begin + kernels::kMuonNormChunk;
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kNormThreads) {
    acc += double{mat[i]} * mat[i];
  }
  acc = WarpSumD(acc);
  __shared__ double warp_sums[kNormThreads / 32];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kNormThreads / 32; ++w) total += warp_sums[w];
    partials[blockIdx.x] = total;
  }
}

// norms[m] = the sum of matrix m's partials, in order.
__global__ void SumPartialsKernel(double* norms, const double* partials, int64_t batch, int64_t chunks) {
  MOE_GRID_STRIDE(m, batch) {
    double total = 0.0;
    for (int64_t k = 0; k < chunks; ++k) total += partials[m * chunks + k];
    norms[m] = total;
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

// out (n) = in as the product type (bf16: rounded to nearest, as static_cast).
void ToOperand(void* out, const float* in, int64_t n, DType type, cudaStream_t stream) {
  if (type == DType::kBF16) {
    CastToBf16(static_cast<bf16*>(out), in, n, stream);
  } else {
    MOE_CUDA_CHECK(cudaMemcpyAsync(out, in, sizeof(float) * n, cudaMemcpyDeviceToDevice, stream));
  }
}

// ws.x holds `batch` wide (r, c) matrices, r <= c, MuonWorkspace::Stride apart: normalise,
// then five X = a X + (b A + c A A) X with A = X X^T, each product one strided-batch call.
void OrthogonaliseWide(Blas* blas, const MuonWorkspace& ws, DType type, int64_t batch, int r, int c,
                       cudaStream_t stream) {
  const int64_t rc = int64_t{r} * c, rr = int64_t{r} * r, n = batch * rc;
  const int64_t sx = MuonWorkspace::Stride(rc), sg = MuonWorkspace::Stride(rr);
  const int64_t chunks = (rc + kernels::kMuonNormChunk - 1) / kernels::kMuonNormChunk;
  PartialSquaresKernel<<<static_cast<unsigned>(batch * chunks), kNormThreads, 0, stream>>>(ws.partials, ws.x, rc,
                                                                                            sx, chunks);
  MOE_CUDA_LAUNCH_CHECK();
  SumPartialsKernel<<<GridFor(batch), kThreads, 0, stream>>>(ws.norms, ws.partials, batch, chunks);
  MOE_CUDA_LAUNCH_CHECK();
  if (type == DType::kBF16) {
    NormaliseKernel<<<GridFor(n), kThreads, 0, stream>>>(ws.x, static_cast<bf16*>(ws.x_op), ws.norms, rc, sx, n);
  } else {
    NormaliseKernel<<<GridFor(n), kThreads, 0, stream>>>(ws.x, static_cast<float*>(ws.x_op), ws.norms, rc, sx, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
  const int b = static_cast<int>(batch);
  for (int it = 0; it < kernels::kNewtonSchulzSteps; ++it) {
    // A = X X^T, rounded once to the product type (as a cast of the fp32 result would be)
    blas->GemmBatched(false, true, r, r, c, 1.0f, ws.x_op, c, sx, ws.x_op, c, sx, 0.0f, ws.gram, r, sg, b, type,
                      type, stream);
    // P = c A A + b A, the beta term from that same A
    blas->GemmBatched(false, false, r, r, r, kernels::kNewtonSchulzC, ws.gram, r, sg, ws.gram, r, sg,
                      kernels::kNewtonSchulzB, ws.poly, r, sg, b, type, type, stream, ws.gram);
    // X <- P X + a X
    blas->GemmBatched(false, false, r, c, r, 1.0f, ws.poly, r, sg, ws.x_op, c, sx, kernels::kNewtonSchulzA, ws.x,
                      c, sx, b, type, DType::kF32, stream);
    // The last iteration's X is read in fp32 only.
    if (it + 1 < kernels::kNewtonSchulzSteps) ToOperand(ws.x_op, ws.x, batch * sx, type, stream);
  }
}

// x (the tensor's first slot) = U of tensor t: its momentum updated as stored, in one pass.
void LoadMomentum(float* x, const MuonTensor& t, int64_t stride, float grad_scale, cudaStream_t stream) {
  const int64_t n = t.batch * t.rows * t.cols;
  if (n == 0) return;
  const bool tall = t.rows > t.cols;
  const float mu = kernels::kMuonMomentum;
  const unsigned state_blocks = static_cast<unsigned>((n + kernels::kStateBlock - 1) / kernels::kStateBlock);
  switch (t.momentum.format) {
    case kernels::StateFormat::kFp32:
      LoadKernel<<<GridFor(n), kThreads, 0, stream>>>(x, nullptr, t.grad, static_cast<float*>(t.momentum.values), n,
                                                      t.rows, t.cols, tall, stride, mu, grad_scale);
      break;
    case kernels::StateFormat::kBf16:
      LoadStoredKernel<kernels::StateFormat::kBf16><<<state_blocks, internal::kStateThreads, 0, stream>>>(
          x, t.grad, t.momentum, n, t.rows, t.cols, tall, stride, mu, grad_scale);
      break;
    case kernels::StateFormat::kInt8:
      LoadStoredKernel<kernels::StateFormat::kInt8><<<state_blocks, internal::kStateThreads, 0, stream>>>(
          x, t.grad, t.momentum, n, t.rows, t.cols, tall, stride, mu, grad_scale);
      break;
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace

void NewtonSchulz(Blas* blas, const MuonWorkspace& ws, DType type, float* x, int64_t batch, int rows, int cols,
                  cudaStream_t stream) {
  const int64_t n = batch * rows * cols;
  if (n == 0) return;
  const bool tall = rows > cols;
  const int64_t stride = MuonWorkspace::Stride(int64_t{rows} * cols);
  LoadKernel<<<GridFor(n), kThreads, 0, stream>>>(ws.x, x, GradRef(), nullptr, n, rows, cols, tall, stride, 0.f, 0.f);
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

void MuonUpdate(Blas* blas, const MuonWorkspace& ws, DType type, const WeightsRef& w, GradRef grad,
                const StateRef& momentum, int64_t batch, int rows, int cols, float lr, float weight_decay,
                float grad_scale, cudaStream_t stream) {
  MuonTensor t;
  t.w = w;
  t.grad = grad;
  t.momentum = momentum;
  t.batch = batch;
  t.rows = rows;
  t.cols = cols;
  t.weight_decay = weight_decay;
  MuonUpdateGroup(blas, ws, type, &t, 1, lr, grad_scale, stream);
}

void MuonUpdateGroup(Blas* blas, const MuonWorkspace& ws, DType type, const MuonTensor* tensors, size_t count,
                     float lr, float grad_scale, cudaStream_t stream) {
  if (count == 0) return;
  const int r = std::min(tensors[0].rows, tensors[0].cols), c = std::max(tensors[0].rows, tensors[0].cols);
  const int64_t stride = MuonWorkspace::Stride(int64_t{r} * c);
  int64_t batch = 0;  // matrices loaded so far: the next tensor's first slot
  for (size_t j = 0; j < count; ++j) {
    const MuonTensor& t = tensors[j];
    if (std::min(t.rows, t.cols) != r || std::max(t.rows, t.cols) != c) {
      std::fprintf(stderr, "MuonUpdateGroup: tensor %zu is %dx%d, the group's wide shape %dx%d\n", j, t.rows, t.cols,
                   r, c);
      std::abort();
    }
    LoadMomentum(ws.x + batch * stride, t, stride, grad_scale, stream);
    batch += t.batch;
  }
  if (batch * r * c == 0) return;
  OrthogonaliseWide(blas, ws, type, batch, r, c, stream);
  batch = 0;
  for (size_t j = 0; j < count; ++j) {
    const MuonTensor& t = tensors[j];
    const int64_t n = t.batch * t.rows * t.cols;
    // The CPU's rounding: decay = 1 - lr wd and step = lr * scale, each one float.
    const float decay = 1.0f - lr * t.weight_decay;
    const float step = lr * kernels::MuonScale(t.rows, t.cols);
    if (n > 0) {
      UpdateKernel<<<GridFor(n), kThreads, 0, stream>>>(t.w, ws.x + batch * stride, n, t.rows, t.cols,
                                                        t.rows > t.cols, stride, decay, step);
      MOE_CUDA_LAUNCH_CHECK();
    }
    batch += t.batch;
  }
}

}  // namespace moe::cuda
