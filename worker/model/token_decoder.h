// Token-by-token inference with a KV cache: each Step appends one token at position length() and
// returns the logits of the next one. CpuDecoder (sample/decoder.h) and CudaDecoder
// (model/cuda/cuda_decoder.h) implement it; Model::Forward over the whole context is their oracle.
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

class TokenDecoder {
 public:
  virtual ~TokenDecoder() = default;
  // Forgets the context.
  virtual void Reset() = 0;
  // Appends token (position length() < seq_len) and returns the logits (V) of the next token.
  virtual const std::vector<float>& Step(int32_t token) = 0;
  virtual int length() const = 0;
  virtual const char* device() const = 0;  // "cpu", "cuda"
};

}  // namespace moe
