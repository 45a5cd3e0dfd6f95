#include "kernels/cuda/reduce.h"

#include "kernels/cuda/device.cuh"

namespace moe::cuda {
namespace {

using internal::kThreads;
using internal::WarpSumD;

__global__ void AddColumnPartialsKernel(float* out, const float* partials, int blocks, int cols) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.0f;
  for (int b = 0; b < blocks; ++b) sum += partials[int64_t{b} * cols + c];
  out[c] += sum;
}

// One warp: lane l sums partials l, l + 32, ... in order, then the lanes' sums meet in a fixed
// butterfly (WarpSumD).
__global__ void AddPartialsKernel(double* out, const double* partials, int blocks) {
  double sum = 0.0;
  for (int b = threadIdx.x; b < blocks; b += 32) sum += partials[b];
  sum = WarpSumD(sum);
  if (threadIdx.x == 0) *out += sum;
}

}  // namespace

void AddColumnPartials(float* out, const float* partials, int blocks, int cols, cudaStream_t stream) {
  if (cols <= 0 || blocks <= 0) return;
  AddColumnPartialsKernel<<<BlocksFor(cols, kThreads), kThreads, 0, stream>>>(out, partials, blocks, cols);
  MOE_CUDA_LAUNCH_CHECK();
}

void AddPartials(double* out, const double* partials, int blocks, cudaStream_t stream) {
  if (blocks <= 0) return;
  AddPartialsKernel<<<1, 32, 0, stream>>>(out, partials, blocks);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
