#include "worker/model/optimizer_state.h"

#include <algorithm>
#include <stdexcept>

#include "kernels/state_codec.h"

namespace moe {

using kernels::kStateBlock;

StateFormat StateFormatOf(ModelConfig::State s) {
  return s == ModelConfig::State::kInt8 ? StateFormat::kInt8
         : s == ModelConfig::State::kBf16 ? StateFormat::kBf16
                                          : StateFormat::kFp32;
}

uint64_t StochasticRoundKey(const std::string& name, int64_t step) {
  return ParamNameHash(name) ^ kernels::SplitMix64(static_cast<uint64_t>(step));
}

OptimizerStateBuffer::OptimizerStateBuffer(const ParamLayout& layout, StateFormat format, bool is_signed)
    : layout_(layout), format_(format), is_signed_(is_signed) {
  if (format == StateFormat::kInt8) {
    int64_t blocks = 0;
    for (const ParamInfo& p : layout.params()) {
      first_block_.push_back(blocks);
      blocks += (p.size + kStateBlock - 1) / kStateBlock;
    }
    blocks_ = blocks;
  }
}

int64_t OptimizerStateBuffer::BytesNeeded() const {
  const int64_t n = layout_.total();
  switch (format_) {
    case StateFormat::kFp32: return 4 * n;
    case StateFormat::kBf16: return 2 * n;
    case StateFormat::kInt8: return n + 4 * blocks_;
  }
  return 0;
}

void OptimizerStateBuffer::Allocate() {
  const int64_t n = layout_.total();
  switch (format_) {
    case StateFormat::kFp32: f32_.assign(n, 0.f); break;
    case StateFormat::kBf16: bf16_.assign(n, 0); break;
    case StateFormat::kInt8:
      scales_.assign(blocks_, 0.f);
      int8_.assign(n, 0);
      break;
  }
  Zero();
}

int64_t OptimizerStateBuffer::bytes() const {
  return static_cast<int64_t>(f32_.size() * 4 + bf16_.size() * 2 + int8_.size() + scales_.size() * 4);
}

int64_t OptimizerStateBuffer::BlockIndex(const ParamInfo& p, int64_t begin) const {
  const int64_t tensor = &p - layout_.params().data();
  if (tensor < 0 || tensor >= static_cast<int64_t>(first_block_.size())) {
    throw std::logic_error("OptimizerStateBuffer: a ParamInfo of another layout");
  }
  if (begin % kStateBlock != 0) throw std::logic_error("OptimizerStateBuffer: int8 ranges start on a block");
  return first_block_[tensor] + begin / kStateBlock;
}

void OptimizerStateBuffer::Read(const ParamInfo& p, int64_t begin, int64_t count, float* out) const {
  const int64_t at = p.offset + begin;
  switch (format_) {
    case StateFormat::kFp32: std::copy(f32_.begin() + at, f32_.begin() + at + count, out); break;
    case StateFormat::kBf16:
      for (int64_t i = 0; i < count; ++i) out[i] = kernels::FromBf16Bits(bf16_[at + i]);
      break;
    case StateFormat::kInt8: {
      int64_t b = BlockIndex(p, begin);
      for (int64_t i = 0; i < count; i += kStateBlock, ++b) {
        const int n = static_cast<int>(std::min<int64_t>(kStateBlock, count - i));
        kernels::DecodeInt8Block(int8_.data() + at + i, n, is_signed_, scales_[b], out + i);
      }
      break;
    }
  }
}

void OptimizerStateBuffer::Write(const ParamInfo& p, int64_t begin, int64_t count, const float* in) {
  const int64_t at = p.offset + begin;
  switch (format_) {
    case StateFormat::kFp32: std::copy(in, in + count, f32_.begin() + at); break;
    case StateFormat::kBf16:
      for (int64_t i = 0; i < count; ++i) bf16_[at + i] = kernels::Bf16Bits(in[i]);
      break;
    case StateFormat::kInt8: {
      int64_t b = BlockIndex(p, begin);
      for (int64_t i = 0; i < count; i += kStateBlock, ++b) {
        const int n = static_cast<int>(std::min<int64_t>(kStateBlock, count - i));
        kernels::EncodeInt8Block(in + i, n, is_signed_, int8_.data() + at + i, &scales_[b]);
      }
      break;
    }
  }
}

void OptimizerStateBuffer::ReadAll(std::vector<float>* out) const {
  out->assign(layout_.total(), 0.f);
  for (const ParamInfo& p : layout_.params()) Read(p, 0, p.size, out->data() + p.offset);
}

void OptimizerStateBuffer::WriteAll(const std::vector<float>& in) {
  if (static_cast<int64_t>(in.size()) < layout_.total()) throw std::logic_error("OptimizerStateBuffer: short input");
  for (const ParamInfo& p : layout_.params()) Write(p, 0, p.size, in.data() + p.offset);
}

void* OptimizerStateBuffer::raw_values() {
  switch (format_) {
    case StateFormat::kFp32: return f32_.data();
    case StateFormat::kBf16: return bf16_.data();
    case StateFormat::kInt8: return int8_.data();
  }
  return nullptr;
}

int64_t OptimizerStateBuffer::raw_value_bytes() const {
  return static_cast<int64_t>(f32_.size() * 4 + bf16_.size() * 2 + int8_.size());
}

void OptimizerStateBuffer::Zero() {
  std::fill(f32_.begin(), f32_.end(), 0.f);
  std::fill(bf16_.begin(), bf16_.end(), 0);
  if (format_ == StateFormat::kInt8) {
    const std::vector<float>& code = kernels::Int8Code(is_signed_);
    const uint8_t zero = static_cast<uint8_t>(std::find(code.begin(), code.end(), 0.f) - code.begin());
    std::fill(int8_.begin(), int8_.end(), zero);
    std::fill(scales_.begin(), scales_.end(), 0.f);
  }
}

}  // namespace moe
