// Muon (MODEL.md "Options: Optimizer and schedule"): Nesterov momentum orthogonalised by
// Newton-Schulz, for a batch of same-shape r x c weight matrices (an expert tensor's E_local
// matrices, or one attention matrix). fp32, one matrix at a time through kernels/matmul: the
// oracle of the CUDA twin (kernels/cuda/muon.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace moe::kernels {

inline constexpr float kMuonMomentum = 0.95f;
inline constexpr int kNewtonSchulzSteps = 5;
// X <- a X + (b A + c A A) X with A = X X^T: the quintic of Keller Jordan's Muon.
inline constexpr float kNewtonSchulzA = 3.4445f;
inline constexpr float kNewtonSchulzB = -4.7750f;
inline constexpr float kNewtonSchulzC = 2.0315f;
inline constexpr float kMuonNormEps = 1e-7f;  // X = U / (||U||_F + eps)

// The update's scale 0.2 sqrt(max(r, c)): AdamW's update RMS (Moonlight), so that Muon takes lr.
inline float MuonScale(int64_t rows, int64_t cols) {
  return 0.2f * static_cast<float>(std::sqrt(static_cast<double>(std::max(rows, cols))));
}

struct MuonConfig {
  float lr = 0.02f;
  float weight_decay = 0.0f;
  float momentum = kMuonMomentum;
};

// x: `batch` matrices (rows, cols), row-major, one after another. Each becomes
// NS^5(X / (||X||_F + eps)), worked on as its transpose when rows > cols (so that X X^T is the
// smaller Gram matrix) and stored back in (rows, cols).
void NewtonSchulz(float* x, int64_t batch, int rows, int cols);

// One Muon step on `batch` (rows, cols) matrices; grad is multiplied by grad_scale (clipping):
//   M = momentum M + G ; U = G + momentum M ; X = NewtonSchulz(U)
//   W = W (1 - lr wd) - lr MuonScale(rows, cols) X
void MuonUpdate(float* param, const float* grad, float* momentum_buf, int64_t batch, int rows, int cols,
                const MuonConfig& cfg, float grad_scale);

}  // namespace moe::kernels
