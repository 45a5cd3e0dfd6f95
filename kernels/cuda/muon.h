// Muon on the GPU, twin of kernels/muon.h: momentum, Newton-Schulz and the update for a batch
// of matrices of one wide shape (every local expert of several tensors at once, planned by
// kernels/muon_plan.h), every product one strided-batch cuBLASLt call. The products read bf16
// or fp32 operands (MODEL.md lets them run in bf16) and accumulate into fp32; X stays fp32, the
// Gram matrix A and the polynomial are written in the product type (so with bf16 products the
// term b A reads A rounded to bf16, where the CPU keeps it fp32).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/state_codec.h"
#include "kernels/muon_plan.h"

namespace moe::cuda {

// Device scratch of one Newton-Schulz run, sized by MuonWorkspace::Size over the runs it serves
// (kernels/muon_plan.h). Matrix m of a run starts at m * Stride(its size) elements.
struct MuonWorkspace {
  float* x = nullptr;          // (elements) fp32: U, then X, in the wide orientation (r <= c)
  void* x_op = nullptr;        // (elements) x's operand copy, of the product type
  void* gram = nullptr;        // (gram) A = X X^T, of the product type (its product writes it)
  void* poly = nullptr;        // (gram) b A + c A A, of the product type
  double* norms = nullptr;     // (batch) squared Frobenius norms
  double* partials = nullptr;  // (partials) their partial sums, kernels::kMuonNormChunk elements each

  static int64_t Stride(int64_t size) { return kernels::MuonStride(size); }
  using Size = kernels::MuonWorkspaceSize;
};

// One Muon tensor of a group: `batch` (rows, cols) matrices as stored, with its weights,
// gradient and momentum (formats as in MuonUpdate below).
struct MuonTensor {
  WeightsRef w;
  GradRef grad;
  StateRef momentum;
  int64_t batch = 0;
  int rows = 0, cols = 0;
  float weight_decay = 0.f;
};

// x (batch, rows, cols) in place: kernels::NewtonSchulz (normalise, transpose when rows > cols,
// five iterations, back), products of `type`.
void NewtonSchulz(Blas* blas, const MuonWorkspace& ws, DType type, float* x, int64_t batch, int rows, int cols,
                  cudaStream_t stream);

// kernels::MuonUpdate: momentum (fp32, in AdamW's m), weights updated in place and, when
// param_bf16 is not null, their bf16 copy.
void MuonUpdate(Blas* blas, const MuonWorkspace& ws, DType type, float* param, bf16* param_bf16, const float* grad,
                float* momentum, int64_t batch, int rows, int cols, float lr, float weight_decay, float grad_scale,
                cudaStream_t stream);
// The same with the momentum stored as train.optimizer_state says (bf16 or int8 blocks: decoded,
// updated in the CPU's order of operations and encoded again in the pass that loads U) and the
// weights stored as `w` says (master_weights bf16: rounded stochastically as on the CPU).
void MuonUpdate(Blas* blas, const MuonWorkspace& ws, DType type, const WeightsRef& w, GradRef grad,
                const StateRef& momentum, int64_t batch, int rows, int cols, float lr, float weight_decay,
                float grad_scale, cudaStream_t stream);

// MuonUpdate on `count` tensors whose matrices share one wide shape (min(rows, cols), max(rows,
// cols)) and fit ws together: each tensor's U loaded into its slots of ws.x (tensor after tensor),
// one Newton-Schulz over all of them, then each tensor's weights updated from its slots.
void MuonUpdateGroup(Blas* blas, const MuonWorkspace& ws, DType type, const MuonTensor* tensors, size_t count,
                     float lr, float grad_scale, cudaStream_t stream);

}  // namespace moe::cuda
