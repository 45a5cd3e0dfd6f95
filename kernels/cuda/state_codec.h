// Compact optimizer state and bf16 master weights on the GPU (MODEL.md "Memory"), twin of
// kernels/state_codec.h and of the CPU model's chunked step: AdamW's m and v as fp32, bf16 or
// int8 blocks, decoded, updated in fp32 and encoded again in one pass; weights updated in fp32
// and stored as fp32 and/or bf16, rounded stochastically from the CPU's counter-based draws.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"
#include "kernels/state_codec.h"

namespace moe::cuda {

// One tensor's optimizer-state buffer on the device, byte for byte the layout of the CPU's
// OptimizerStateBuffer (worker/model/optimizer_state.h): the values from the tensor's start
// and, for int8, one fp32 scale per block of kernels::kStateBlock from the tensor's start.
struct StateRef {
  kernels::StateFormat format = kernels::StateFormat::kFp32;
  void* values = nullptr;       // (n) float, bf16 bits (uint16) or int8 codes (uint8)
  float* scales = nullptr;      // int8: (ceil(n / kStateBlock))
  const float* code = nullptr;  // int8: the 256 values of kernels::Int8Code(signed), on the device
};

// One tensor's weights on the device and how an update is stored.
struct WeightsRef {
  float* f32 = nullptr;  // fp32 weights, or null when bf16 ones are the master
  bf16* b16 = nullptr;   // bf16 weights: the master (f32 null), the products' copy, or null
  // master_weights bf16: every updated value is rounded to bf16 stochastically (and stored in
  // both f32 and b16 where both are set). The draw of element i is the CPU's
  // kernels::CounterUniform(key, round_first + i); round_seed = kernels::SplitMix64(key), mixed
  // once on the host.
  bool stochastic = false;
  uint64_t round_seed = 0;
  int64_t round_first = 0;
};

// The CPU's kernels::AdamWUpdate constants and this step's bias corrections (bc = 1 - beta^step,
// computed in double, rounded to float).
struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale;
};

// dst (2 * kInt8CodeSize floats, device) = kernels::Int8Code(true), then Int8Code(false): the
// one table of the code, copied.
void UploadInt8Codes(float* dst, cudaStream_t stream);

// AdamW on n values through the stored formats: m and v decoded, updated in fp32 in the CPU's
// order of operations (no fused multiply-adds, so the same inputs give the same bits), encoded
// again (int8: one thread block per state block, whose new scale is its largest |value|), and
// the weights stored as `w` says. m and v share one format.
void AdamWUpdate(const WeightsRef& w, GradRef grad, const StateRef& m, const StateRef& v, int64_t n,
                 const AdamWArgs& args, cudaStream_t stream);

// Bf16 weights -> fp32 (n values).
void Bf16ToFloat(float* out, const bf16* in, int64_t n, cudaStream_t stream);

}  // namespace moe::cuda
