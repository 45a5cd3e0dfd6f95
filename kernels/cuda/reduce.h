// Deterministic sums over rows on the GPU: the same bits on every run of the same job on the
// same kind of GPU. A kernel that sums over rows (a norm's weight gradient, a squared norm)
// leaves one partial sum per block (and column) in a caller's scratch instead of adding it to
// the output with an atomic, whose order changes from run to run; one more kernel then adds
// the blocks' partials to the output in block order.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// The most blocks a summing kernel launches: its scratch holds this many partials per column.
inline constexpr int kPartialBlocks = 1024;
// Floats of scratch for a sum over `cols` columns (at least kPartialBlocks doubles' worth).
inline int64_t PartialsFloats(int64_t cols) { return kPartialBlocks * (cols > 2 ? cols : 2); }

// out[c] += sum over b < blocks, in order, of partials[b * cols + c].
void AddColumnPartials(float* out, const float* partials, int blocks, int cols, cudaStream_t stream);
// *out += sum over b < blocks, in a fixed order, of partials[b].
void AddPartials(double* out, const double* partials, int blocks, cudaStream_t stream);

}  // namespace moe::cuda
