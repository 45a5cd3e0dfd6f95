// The elementwise and row-wise ops of MODEL.md on the GPU, each the twin of a CPU kernel in
// kernels/*.h with the same shapes and accumulate (+=) conventions. This header only includes
// the headers that own them, so that "kernels/cuda/nn.h" keeps giving all of them:
//   elementwise.h    embedding, dropout, SwiGLU, residual add
//   rmsnorm.h        RMSNorm
//   rope.h           RoPE tables and rotation
//   cross_entropy.h  fused softmax cross-entropy
//   adamw.h          AdamW, squared norms and sums
#pragma once

#include "kernels/cuda/adamw.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
