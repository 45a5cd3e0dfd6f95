// Token embedding lookup.
#pragma once

#include <cstdint>

namespace moe::kernels {

// out (n, d) = wte[idx] ; wte (v, d).
void EmbeddingForward(float* out, const int32_t* idx, const float* wte, int n, int d);
// dwte[idx[i]] += dout[i].
void EmbeddingBackward(float* dwte, const float* dout, const int32_t* idx, int n, int d);

}  // namespace moe::kernels
