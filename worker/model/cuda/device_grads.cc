#include "worker/model/cuda/device_grads.h"

#ifdef MOE_WITH_CUDA

#include <algorithm>
#include <stdexcept>

#include "kernels/cuda/adamw.h"
#include "kernels/cuda/matmul.h"

namespace moe {

DeviceGrads::DeviceGrads(const ParamLayout& layout, bool bf16_storage, bool bf16_values, DeviceArena* arena)
    : layout_(layout), bf16_values_(bf16_values && !bf16_storage) {
  const int64_t total = layout.total();
  if (!bf16_storage) {
    f32_ = arena->Alloc<float>(total);
    return;
  }
  b16_ = arena->Alloc<cuda::bf16>(total);
  reserved_ = std::make_unique<ReservedRange>(total);
  for (const ParamInfo& info : layout.params()) {
    if (!Bf16Gradient(info) && info.expert) {
      throw std::logic_error("DeviceGrads: an fp32 expert gradient (" + info.name + ")");
    }
  }
  // The fp32 gradients (their padding is zeroed with them: SquaredNorms reads it all).
  copies_ = Fp32Tensors(layout, [](const ParamInfo& info) { return !Bf16Gradient(info); }, arena);
}

ModelTensors DeviceGrads::Bind() const {
  ModelTensors g = layout_.Bind(handles());
  if (f32_ == nullptr) copies_.Redirect(&g, reserved_->base());
  return g;
}

cuda::GradRef DeviceGrads::Ref(const ParamInfo& info) const {
  if (f32_ != nullptr) return cuda::GradRef(f32_ + info.offset);
  if (const float* copy = copies_.at(info)) return cuda::GradRef(copy);
  return cuda::GradRef(static_cast<const cuda::bf16*>(b16_ + info.offset));
}

void DeviceGrads::Zero(cudaStream_t stream, bool experts) {
  const int64_t upto = experts ? layout_.total() : layout_.dense_size();
  if (f32_ != nullptr) {
    MOE_CUDA_CHECK(cudaMemsetAsync(f32_, 0, sizeof(float) * upto, stream));
    return;
  }
  MOE_CUDA_CHECK(cudaMemsetAsync(b16_, 0, sizeof(cuda::bf16) * upto, stream));
  if (copies_.size() > 0) MOE_CUDA_CHECK(cudaMemsetAsync(copies_.base(), 0, sizeof(float) * copies_.size(), stream));
}

void DeviceGrads::ZeroExperts(cudaStream_t stream) {
  const int64_t dense = layout_.dense_size(), experts = layout_.total() - dense;
  if (f32_ != nullptr) {
    MOE_CUDA_CHECK(cudaMemsetAsync(f32_ + dense, 0, sizeof(float) * experts, stream));
  } else {
    MOE_CUDA_CHECK(cudaMemsetAsync(b16_ + dense, 0, sizeof(cuda::bf16) * experts, stream));
  }
}

void DeviceGrads::RoundToBf16Values(cudaStream_t stream) {
  if (!bf16_values_) return;
  for (const ParamInfo& info : layout_.params()) {
    if (Bf16Gradient(info)) cuda::RoundToBf16Values(f32_ + info.offset, info.size, stream);
  }
}

void DeviceGrads::SquaredNorms(double* norms, double* partials, cudaStream_t stream) const {
  const int64_t dense = layout_.dense_size(), total = layout_.total();
  if (f32_ != nullptr) {
    cuda::SquaredNorm(norms, f32_, dense, partials, stream);
    cuda::SquaredNorm(norms + 1, f32_ + dense, total - dense, partials, stream);
    return;
  }
  // The bf16 buffer holds zeros where a gradient is fp32; the fp32 ones are all replicated.
  cuda::SquaredNorm(norms, b16_, dense, partials, stream);
  cuda::SquaredNorm(norms + 1, b16_ + dense, total - dense, partials, stream);
  cuda::SquaredNorm(norms, copies_.base(), copies_.size(), partials, stream);
}

void DeviceGrads::Download(std::vector<float>* host, cudaStream_t stream) const {
  const int64_t total = layout_.total();
  host->resize(total);
  if (f32_ != nullptr) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(host->data(), f32_, sizeof(float) * total, cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  DownloadBf16(host->data(), b16_, total, stream);  // zeros where a gradient is fp32: overwritten next
  for (const ParamInfo& info : layout_.params()) {
    if (Bf16Gradient(info)) continue;
    MOE_CUDA_CHECK(cudaMemcpyAsync(host->data() + info.offset, copies_.at(info), sizeof(float) * info.size,
                                   cudaMemcpyDeviceToHost, stream));
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void DeviceGrads::Upload(const std::vector<float>& host, cudaStream_t stream) {
  const int64_t total = layout_.total();
  const int64_t count = std::min<int64_t>(static_cast<int64_t>(host.size()), total);
  if (f32_ != nullptr) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(f32_, host.data(), sizeof(float) * count, cudaMemcpyHostToDevice, stream));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
    return;
  }
  std::vector<float> full;
  Download(&full, stream);  // a short input keeps the rest
  std::copy(host.begin(), host.begin() + count, full.begin());
  for (const ParamInfo& info : layout_.params()) {
    if (Bf16Gradient(info)) continue;
    MOE_CUDA_CHECK(cudaMemcpyAsync(copies_.at(info), full.data() + info.offset, sizeof(float) * info.size,
                                   cudaMemcpyHostToDevice, stream));
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  // The bf16 buffer keeps zeros where a gradient is fp32 (SquaredNorms reads all of it).
  for (const ParamInfo& info : layout_.params()) {
    if (!Bf16Gradient(info)) std::fill(full.begin() + info.offset, full.begin() + info.offset + info.size, 0.f);
  }
  UploadAsBf16(b16_, full.data(), total, stream);
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
