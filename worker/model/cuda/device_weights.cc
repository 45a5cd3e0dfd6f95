#include "worker/model/cuda/device_weights.h"

#ifdef MOE_WITH_CUDA

#include <stdexcept>

#include "kernels/cuda/matmul.h"
#include "kernels/dropout.h"
#include "worker/model/optimizer_state.h"

namespace moe {
namespace {

// The tensors the model reads in fp32 even with bf16 products: all but the products' matrices
// (the blocks' matrices, the embedding and the head).
bool ReadInFp32(const ParamInfo& info) {
  return !info.muon && info.name != "wte.weight" && info.name != "lm_head.weight";
}

}  // namespace

DeviceWeights::DeviceWeights(const ParamLayout& layout, bool bf16_products, bool bf16_master, DeviceArena* arena)
    : layout_(layout), bf16_master_(bf16_master) {
  const int64_t total = layout.total();
  if (bf16_products) b16_ = arena->Alloc<cuda::bf16>(total);
  if (!bf16_products || !bf16_master) {
    f32_ = arena->Alloc<float>(total);
    return;
  }
  reserved_ = std::make_unique<ReservedRange>(total);
  copies_ = Fp32Tensors(layout, ReadInFp32, arena);
}

DeviceWeights::~DeviceWeights() = default;

ModelTensors DeviceWeights::Bind() const {
  ModelTensors w = layout_.Bind(handles());
  if (bf16_only()) copies_.Redirect(&w, reserved_->base());
  return w;
}

cuda::WeightsRef DeviceWeights::Ref(const ParamInfo& info, int64_t step) const {
  cuda::WeightsRef r;
  if (f32_ != nullptr) {
    r.f32 = f32_ + info.offset;
  } else {
    r.f32 = copies_.at(info);
  }
  if (b16_ != nullptr) r.b16 = b16_ + info.offset;
  if (bf16_master_) {
    r.stochastic = true;
    r.round_seed = kernels::SplitMix64(StochasticRoundKey(info.name, step));
    r.round_first = layout_.GlobalFirst(info);
  }
  return r;
}

void DeviceWeights::Upload(const std::vector<float>& host, cudaStream_t stream) {
  const int64_t total = layout_.total();
  if (static_cast<int64_t>(host.size()) < total) throw std::logic_error("DeviceWeights::Upload: short input");
  if (f32_ != nullptr) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(f32_, host.data(), sizeof(float) * total, cudaMemcpyHostToDevice, stream));
    if (b16_ != nullptr) cuda::CastToBf16(b16_, f32_, total, stream);
  } else {
    UploadAsBf16(b16_, host.data(), total, stream);
    for (const ParamInfo& info : layout_.params()) {
      if (float* copy = copies_.at(info)) cuda::Bf16ToFloat(copy, b16_ + info.offset, info.size, stream);
    }
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host buffers go out of scope
}

void DeviceWeights::Download(std::vector<float>* host, cudaStream_t stream) const {
  const int64_t total = layout_.total();
  host->resize(total);
  if (f32_ != nullptr) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(host->data(), f32_, sizeof(float) * total, cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  DownloadBf16(host->data(), b16_, total, stream);
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
