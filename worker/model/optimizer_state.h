// One optimizer-state buffer (AdamW's m or v, Muon's momentum in m's place) stored as
// train.optimizer_state says: fp32, bf16, or int8 blocks (kernels/state_codec.h). Blocks never
// cross a tensor: each tensor of the ParamLayout is cut into blocks of at most 2048 from its
// start, one fp32 scale each. Reading and writing go by tensor and by a range of its blocks, so
// an update never needs more than one tensor in fp32 at a time; the arithmetic stays fp32.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/state_codec.h"
#include "worker/model/param_layout.h"

namespace moe {

using kernels::StateFormat;

// The format train.optimizer_state names.
StateFormat StateFormatOf(ModelConfig::State s);

// master_weights bf16: the key of tensor `name`'s stochastic rounding at `step`. The draw of its
// element with global index c (ParamLayout::GlobalFirst + i) is kernels::CounterUniform(key, c):
// the same on every rank and on both backends.
uint64_t StochasticRoundKey(const std::string& name, int64_t step);

class OptimizerStateBuffer {
 public:
  // is_signed: m and Muon's momentum (true), v (false: never negative, a finer int8 code).
  // Holds nothing until Allocate (so that its owner can catch std::bad_alloc there).
  OptimizerStateBuffer(const ParamLayout& layout, StateFormat format, bool is_signed);
  // Storage for every value, zeroed. Throws std::bad_alloc when memory runs out.
  void Allocate();
  // Bytes Allocate takes.
  int64_t BytesNeeded() const;

  StateFormat format() const { return format_; }
  // The fp32 values in the layout's flat order when the format is fp32 (the fast path: no
  // decoding), else null.
  float* fp32() { return format_ == StateFormat::kFp32 ? f32_.data() : nullptr; }
  // Bytes held (what the memory estimate counts).
  int64_t bytes() const;

  // Values [begin, begin + count) of the tensor whose ParamInfo is p, as fp32. For int8, begin
  // and count are whole blocks (multiples of kernels::kStateBlock, count may end at the tensor's
  // end); fp32 and bf16 take any range.
  void Read(const ParamInfo& p, int64_t begin, int64_t count, float* out) const;
  void Write(const ParamInfo& p, int64_t begin, int64_t count, const float* in);
  // The whole buffer in the layout's flat order, as fp32 (checkpoints store fp32), and back.
  void ReadAll(std::vector<float>* out) const;
  void WriteAll(const std::vector<float>& in);
  void Zero();

  // The storage as it is, for a device twin of the same layout (the CUDA model copies its state
  // through these to and from checkpoints): the values (4, 2 or 1 bytes each, the layout's flat
  // order) and, for int8, the scales.
  void* raw_values();
  int64_t raw_value_bytes() const;
  float* scales() { return scales_.data(); }
  int64_t blocks() const { return blocks_; }
  // int8: the index of the first block of the tensor at `tensor` in the layout's order.
  int64_t first_block(size_t tensor) const { return first_block_[tensor]; }

 private:
  int64_t BlockIndex(const ParamInfo& p, int64_t begin) const;

  const ParamLayout& layout_;
  StateFormat format_;
  bool is_signed_;
  std::vector<float> f32_;
  std::vector<uint16_t> bf16_;
  std::vector<uint8_t> int8_;
  std::vector<float> scales_;          // int8: one per block
  std::vector<int64_t> first_block_;   // int8: per tensor (layout order), its first block's index
  int64_t blocks_ = 0;                 // int8: blocks in all
};

}  // namespace moe
