// Elementwise ops on the GPU, twins of kernels/embedding.h, kernels/dropout.h (CounterUniform
// bit for bit) and kernels/experts.h's activations, with the residual add. Device pointers, stream last.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cuda/common.h"
#include "kernels/experts.h"

namespace moe::cuda {

// out (n, d) = wte[idx].
void EmbeddingForward(float* out, const int32_t* idx, const float* wte, int n, int d, cudaStream_t stream);
// The same from bf16 weights (master_weights bf16: the model keeps no fp32 table).
void EmbeddingForwardBf16(float* out, const int32_t* idx, const bf16* wte, int n, int d, cudaStream_t stream);
// A batch's rows grouped by token id (host code, from the host's ids): order (n) the rows sorted by
// id, each id's rows in increasing order; ids (runs) the ids present, increasing; starts (runs + 1)
// where each id's rows begin in order. An id outside [0, vocab) throws std::out_of_range.
struct TokenRuns {
  std::vector<int32_t> order, starts, ids;
  int runs() const { return static_cast<int>(ids.size()); }
};
TokenRuns GroupTokensById(const int32_t* idx, int n, int vocab);
// dwte[ids[r]] += the sum, in order, of dout's rows order[starts[r] .. starts[r + 1]) (device copies
// of a TokenRuns): a fixed order of additions, the same bits every run.
void EmbeddingBackward(float* dwte, const float* dout, const int32_t* order, const int32_t* starts, const int32_t* ids,
                       int runs, int d, cudaStream_t stream);

// out = in * keep / (1 - p) (out may alias in) ; din += dout * keep / (1 - p).
void DropoutForward(float* out, const float* in, int64_t n, float p, uint64_t seed, uint64_t offset,
                    cudaStream_t stream);
void DropoutBackward(float* din, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream);
// The residual's dropout sites in one pass each: out = x + dropout(y) (the sum DropoutForward then
// AddOut make, bit for bit; out may alias x, not y), and din = dropout's backward of dout (what
// clearing din and DropoutBackward give; din may not alias dout).
void DropoutAddOut(float* out, const float* x, const float* y, int64_t n, float p, uint64_t seed, uint64_t offset,
                   cudaStream_t stream);
void DropoutBackwardTo(float* din, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset,
                       cudaStream_t stream);

// h = silu(g) * u ; dg, du += (accumulate) or = (overwrite) the SwiGLU gradients. dh may alias du
// when overwriting (each element is read before it is written).
void SwigluForward(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream);
void SwigluBackward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                    bool accumulate, cudaStream_t stream);

// The activations without W3 (kernels/experts.h; kind relu2 or gelu): h = act(g) ; dg += or =
// dh * act'(g) (dh may alias dg when overwriting). fp32, and bf16 for the fast path (overwrite).
void ActivationForward(kernels::ExpertActivation act, float* h, const float* g, int64_t n, cudaStream_t stream);
void ActivationBackward(kernels::ExpertActivation act, float* dg, const float* dh, const float* g, int64_t n,
                        bool accumulate, cudaStream_t stream);
void ActivationForwardBf16(kernels::ExpertActivation act, bf16* h, const bf16* g, int64_t n, cudaStream_t stream);
void ActivationBackwardBf16(kernels::ExpertActivation act, bf16* dg, const bf16* dh, const bf16* g, int64_t n,
                            cudaStream_t stream);

// out += x (n elements; the shared experts' outputs into the layer's).
void AddInPlace(float* out, const float* x, int64_t n, cudaStream_t stream);

// out = x + y (n elements, each read before its sum is written: out may alias x or y).
void AddOut(float* out, const float* x, const float* y, int64_t n, cudaStream_t stream);

}  // namespace moe::cuda
