// The experts (SwiGLU MLPs, or relu2 / gelu without W3) of one layer on the GPU, twin of
// kernels/experts.h, forward and backward: the simple path on grouped_gemm.h (fp32, and the oracle) and the bf16 fast path on
// grouped_blas.h and expert_layout.h.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"
#include "kernels/cuda/expert_layout.h"
#include "kernels/cuda/grouped_blas.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/experts.h"

namespace moe::cuda {

// kernels::ExpertsForward / ExpertsBackward over grouped rows (offsets as in GroupedGemm):
// ys (rows, d); g, u, h (rows, f) saved; weights w1, w3 (e, d, f), w2 (e, f, d). Backward
// accumulates into dxs, dw1, dw3, dw2 (each may be null); scratch: 2 * max_rows * f floats.
// act relu2 / gelu: no W3 (w3, u, dw3 unused, may be null).
void ExpertsForward(float* ys, float* g, float* u, float* h, const float* xs, const float* w1,
                    const float* w3, const float* w2, const int32_t* offsets, int max_rows, int e_local,
                    int d, int f, bool tensor_cores, cudaStream_t stream,
                    kernels::ExpertActivation act = kernels::ExpertActivation::kSwiglu);
void ExpertsBackward(float* dxs, float* dw1, float* dw3, float* dw2, const float* dys, const float* xs,
                     const float* g, const float* u, const float* h, const float* w1, const float* w3,
                     const float* w2, const int32_t* offsets, int max_rows, int e_local, int d, int f,
                     float* scratch, bool tensor_cores, cudaStream_t stream,
                     kernels::ExpertActivation act = kernels::ExpertActivation::kSwiglu);

// ExpertsForward / ExpertsBackward on the fast path: bf16 operands and products, fp32 where
// the oracle keeps fp32 (the accumulated gradients), rows as in ExpertsForward. xs16, dys16,
// g16, u16, h16: the experts' layout (expert_layout.h; ExpertLayoutRows rows of d or f). The
// forward writes ys (rows, d) in fp32 and/or ys16 in bf16 (either may be null), compact, and saves
// g16, u16, h16 for the backward, which takes the same counts. h16 may be null in both: the
// forward then keeps h in its scratch and the backward computes it again from g16, u16 (the
// forward's kernel, the same bits), a quarter (swiglu) or half of the saved rows less for one
// elementwise pass. dw1, dw3, dw2 and the compact dxs (each may be null) accumulate in fp32.
// The backward overwrites g16 and u16 with their gradients (the saved rows are dead after it:
// two (rows, f) buffers fewer). Scratch (both): ExpertsBf16Scratch bf16: (rows, f) + 2 (rows, d).
// dx_layout (strided or chunked layouts only): dx is left in the layout, bf16, in the scratch,
// and *dx_layout points at it (dxs untouched; AddFromExpertLayout sums it per token).
// y_layout (ExpertLayoutRows rows of d): the forward's output also in the layout, where the last
// product writes it (CombineFromExpertLayout reads it there; ys, ys16 may then be null).
void ExpertsForwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* ys, bf16* ys16, bf16* g16,
                        bf16* u16, bf16* h16, const bf16* xs16, const bf16* w1, const bf16* w3, const bf16* w2,
                        int e_local, int d, int f, bf16* scratch16, cudaStream_t stream,
                        kernels::ExpertActivation act = kernels::ExpertActivation::kSwiglu,
                        bf16* y_layout = nullptr);
int64_t ExpertsBf16Scratch(int64_t layout_rows, int e_local, int d, int f);
// The weight gradients ExpertsBackwardBf16 adds to: fp32 ones, or with train.master_weights bf16
// bf16 ones (*_bf16: each product accumulates in fp32, its sum with the stored gradient is rounded
// to bf16 as it is stored). Any may be null (skipped); a bf16 one takes the place of its fp32 one.
// unwritten: they hold nothing yet (the step's first backward, the caller cleared nothing):
// written, not added to; experts with no rows get zeros.
struct ExpertGrads {
  float *w1 = nullptr, *w3 = nullptr, *w2 = nullptr;
  bf16 *w1_bf16 = nullptr, *w3_bf16 = nullptr, *w2_bf16 = nullptr;
  bool unwritten = false;
};
void ExpertsBackwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* dxs, const ExpertGrads& dw,
                         const bf16* dys16, const bf16* xs16, bf16* g16, bf16* u16, const bf16* h16,
                         const bf16* w1, const bf16* w3, const bf16* w2, int e_local, int d, int f,
                         bf16* scratch16, cudaStream_t stream,
                         kernels::ExpertActivation act = kernels::ExpertActivation::kSwiglu,
                         const bf16** dx_layout = nullptr);
void ExpertsBackwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* dxs, float* dw1, float* dw3,
                         float* dw2, const bf16* dys16, const bf16* xs16, bf16* g16, bf16* u16,
                         const bf16* h16, const bf16* w1, const bf16* w3, const bf16* w2, int e_local, int d,
                         int f, bf16* scratch16, cudaStream_t stream,
                         kernels::ExpertActivation act = kernels::ExpertActivation::kSwiglu);

}  // namespace moe::cuda
