// Muon on the GPU, twin of kernels/muon.h: momentum, Newton-Schulz and the update for a batch
// of same-shape matrices (all local experts of one expert tensor at once), every product one
// strided-batch cuBLASLt call. The products read bf16 or fp32 operand copies (MODEL.md lets
// them run in bf16) and accumulate into fp32.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/state_codec.h"

namespace moe::cuda {

// Device scratch of one Muon call, sized by MuonWorkspace::Size over the tensors it serves.
// Matrix m of a batch starts at m * Stride(its size) elements, so that every matrix of the
// strided products is as aligned as the buffer (cuBLASLt picks kernels by alignment).
struct MuonWorkspace {
  float* x = nullptr;       // (elements) fp32: U, then X, in the wide orientation (r <= c)
  void* x_op = nullptr;     // (elements) x's operand copy, of the product type
  float* gram = nullptr;    // (gram) fp32: A = X X^T, then b A + c A A
  void* gram_op = nullptr;  // (gram) gram's operand copy
  double* norms = nullptr;  // (batch) squared Frobenius norms

  // Elements from one matrix of `size` elements to the next: 64 (256 bytes of fp32) apart.
  static int64_t Stride(int64_t size) { return (size + 63) / 64 * 64; }

  struct Size {
    int64_t elements = 0, gram = 0, batch = 0;
    // Grows to hold `batch` (rows, cols) matrices.
    void Fit(int64_t batch_count, int64_t rows, int64_t cols) {
      const int64_t r = std::min(rows, cols);
      elements = std::max(elements, batch_count * Stride(rows * cols));
      gram = std::max(gram, batch_count * Stride(r * r));
      batch = std::max(batch, batch_count);
    }
  };
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
void MuonUpdate(Blas* blas, const MuonWorkspace& ws, DType type, const WeightsRef& w, const float* grad,
                const StateRef& momentum, int64_t batch, int rows, int cols, float lr, float weight_decay,
                float grad_scale, cudaStream_t stream);

}  // namespace moe::cuda
