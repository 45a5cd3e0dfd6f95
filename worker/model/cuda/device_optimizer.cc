#include "worker/model/cuda/device_optimizer.h"

#ifdef MOE_WITH_CUDA

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/adamw.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/state_codec.h"
#include "kernels/state_codec.h"

namespace moe {
namespace {

// Which of the forward's groups reads the tensor: 0 the embedding, l + 1 block l, layers + 1 the
// final norm and the head. A tensor of no block other than those two goes in group 0, the earliest
// wait, so that a new tensor is never read before its update.
int ForwardGroup(const ParamInfo& info, int layers) {
  if (info.block >= 0 && info.block < layers) return info.block + 1;
  if (info.name.rfind("final_norm.", 0) == 0 || info.name.rfind("lm_head.", 0) == 0) return layers + 1;
  return 0;
}

// The update overlaps the next forward unless MOE_OPT_OVERLAP=0 (an A/B switch: on one H100,
// small +2.0% and medium +1.2% tokens/s over the synchronous update, with the streams'
// priorities; scripts/device_ab.sh with AB_ENVS="sync=MOE_OPT_OVERLAP=0"). The same bits as the
// synchronous update: CudaTrainerTest.OverlappedUpdateSameBitsAsSynchronous.
bool OverlapWanted() {
  const char* v = std::getenv("MOE_OPT_OVERLAP");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

}  // namespace

DeviceOptimizer::DeviceOptimizer(const ModelConfig& cfg, const ParamLayout& layout, bool bf16_products,
                                 DeviceArena* arena, cudaStream_t stream)
    : layout_(layout),
      muon_on_(cfg.muon),
      bf16_(bf16_products),
      format_(StateFormatOf(cfg.optimizer_state)),
      stream_(stream),
      m_(layout, format_, /*signed_code=*/true),
      v_(layout, format_, /*signed_code=*/false),
      layers_(cfg.layers),
      overlap_(!cfg.muon && OverlapWanted()) {
  groups_.resize(static_cast<size_t>(layers_) + 2);
  for (size_t t = 0; t < layout.params().size(); ++t) {
    groups_[static_cast<size_t>(ForwardGroup(layout.params()[t], layers_))].push_back(t);
  }
  if (overlap_) {
    update_stream_ = cuda::NewStream(cuda::StreamPriority::kBackground);
    group_done_.resize(groups_.size());
    for (cudaEvent_t& e : group_done_) MOE_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&grads_ready_, cudaEventDisableTiming));
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&all_done_, cudaEventDisableTiming));
  }
  adam_.beta1 = cfg.adam_beta1;
  adam_.beta2 = cfg.adam_beta2;
  Allocate(&m_, arena);
  Allocate(&v_, arena);
  if (format_ == StateFormat::kInt8) {
    codes_ = arena->Alloc<float>(2 * kernels::kInt8CodeSize);
    cuda::UploadInt8Codes(codes_, stream_);
  }
  if (cfg.muon) {
    // One Newton-Schulz run per chunk of same-wide-shape tensors (every layer's expert tensors
    // at once), the workspace sized for the largest; X's operand copy, the Gram matrices and
    // the polynomials are bf16 with bf16 products.
    std::vector<kernels::MuonTensorShape> shapes;
    for (size_t t = 0; t < layout.params().size(); ++t) {
      const ParamInfo& info = layout.params()[t];
      if (!info.muon) continue;
      const int64_t rows = info.shape[info.shape.size() - 2], cols = info.shape.back();
      muon_tensors_.push_back(t);
      shapes.push_back({info.size / (rows * cols), rows, cols});
    }
    cuda::MuonWorkspace::Size need;
    muon_chunks_ = kernels::PlanMuonChunks(shapes, &need);
    auto operands = [&](int64_t n) {
      return bf16_ ? static_cast<void*>(arena->Alloc<cuda::bf16>(n)) : static_cast<void*>(arena->Alloc<float>(n));
    };
    muon_.x = arena->Alloc<float>(need.elements);
    muon_.x_op = operands(need.elements);
    muon_.gram = operands(need.gram);
    muon_.poly = operands(need.gram);
    muon_.norms = arena->Alloc<double>(need.batch);
    muon_.partials = arena->Alloc<double>(need.partials);
    // The padding between matrices is copied to x's operand but never multiplied: zero it once.
    MOE_CUDA_CHECK(cudaMemsetAsync(muon_.x, 0, sizeof(float) * need.elements, stream_));
  }
  Zero();
}

DeviceOptimizer::~DeviceOptimizer() {
  if (update_stream_ == nullptr) return;
  cudaStreamSynchronize(update_stream_);  // the arena's memory outlives no queued update
  for (cudaEvent_t e : group_done_) cudaEventDestroy(e);
  cudaEventDestroy(grads_ready_);
  cudaEventDestroy(all_done_);
  cudaStreamDestroy(update_stream_);
}

void DeviceOptimizer::WaitForGroup(cudaStream_t s, int group) const {
  if (in_flight_) MOE_CUDA_CHECK(cudaStreamWaitEvent(s, group_done_[static_cast<size_t>(group)], 0));
}

void DeviceOptimizer::Join(cudaStream_t s) {
  if (!in_flight_) return;
  MOE_CUDA_CHECK(cudaStreamWaitEvent(s, all_done_, 0));
  in_flight_ = false;
}

void DeviceOptimizer::AfterUpdate(cudaStream_t s, const std::function<void(cudaStream_t)>& work) {
  if (!in_flight_) {
    work(s);
    return;
  }
  work(update_stream_);
  MOE_CUDA_CHECK(cudaEventRecord(all_done_, update_stream_));
}

int64_t DeviceOptimizer::ValueBytes() const {
  const int64_t per = format_ == StateFormat::kFp32 ? 4 : format_ == StateFormat::kBf16 ? 2 : 1;
  return per * layout_.total();
}

void DeviceOptimizer::Allocate(Stored* s, DeviceArena* arena) {
  s->values = arena->Alloc<uint8_t>(ValueBytes());
  if (format_ == StateFormat::kInt8) s->scales = arena->Alloc<float>(s->shape.blocks());
}

void DeviceOptimizer::Zero() {
  Join(stream_);
  for (Stored* s : {&m_, &v_}) {
    int zero_code = 0;  // fp32 and bf16: all-zero bytes are 0.0
    if (format_ == StateFormat::kInt8) {
      zero_code = kernels::NearestCode(kernels::Int8Code(s->is_signed).data(), 0.f);
      MOE_CUDA_CHECK(cudaMemsetAsync(s->scales, 0, sizeof(float) * s->shape.blocks(), stream_));
    }
    MOE_CUDA_CHECK(cudaMemsetAsync(s->values, zero_code, ValueBytes(), stream_));
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

cuda::StateRef DeviceOptimizer::Ref(const Stored& s, size_t tensor) const {
  const int64_t at = layout_.params()[tensor].offset;
  cuda::StateRef r;
  r.format = format_;
  switch (format_) {
    case StateFormat::kFp32: r.values = static_cast<float*>(s.values) + at; break;
    case StateFormat::kBf16: r.values = static_cast<uint16_t*>(s.values) + at; break;
    case StateFormat::kInt8:
      r.values = static_cast<uint8_t*>(s.values) + at;
      r.scales = s.scales + s.shape.first_block(tensor);
      r.code = codes_ + (s.is_signed ? 0 : kernels::kInt8CodeSize);
      break;
  }
  return r;
}

void DeviceOptimizer::Step(const DeviceWeights& weights, const DeviceGrads& grads, cuda::Blas* blas, int64_t step,
                           double lr, double muon_lr, double weight_decay, float clip_scale) {
  // The CPU optimizer's constants (kernels/adamw.h, the job's betas), bias corrections in double.
  const kernels::AdamWConfig& c = adam_;
  cuda::AdamWArgs args;
  args.lr = static_cast<float>(lr);
  args.beta1 = c.beta1;
  args.beta2 = c.beta2;
  args.eps = c.eps;
  args.bc1 = static_cast<float>(1.0 - std::pow(double{c.beta1}, static_cast<double>(step)));
  args.bc2 = static_cast<float>(1.0 - std::pow(double{c.beta2}, static_cast<double>(step)));
  args.grad_scale = clip_scale;
  const std::vector<ParamInfo>& params = layout_.params();
  Join(stream_);  // a step with no forward since the last one
  cudaStream_t s = stream_;
  if (overlap_) {
    MOE_CUDA_CHECK(cudaEventRecord(grads_ready_, stream_));
    MOE_CUDA_CHECK(cudaStreamWaitEvent(update_stream_, grads_ready_, 0));
    s = update_stream_;
  }
  for (size_t group = 0; group < groups_.size(); ++group) {
    for (size_t t : groups_[group]) {
      const ParamInfo& info = params[t];
      if (muon_on_ && info.muon) continue;  // below, grouped
      const float wd = info.decay ? static_cast<float>(weight_decay) : 0.f;
      const cuda::WeightsRef w = weights.Ref(info, step);
      const cuda::GradRef g = grads.Ref(info);
      if (format_ == StateFormat::kFp32 && !w.stochastic && g.f32 != nullptr) {
        // The default (fp32 moments and master weights): the vectorised kernel.
        cuda::AdamWUpdate(w.f32, w.b16, g.f32, static_cast<float*>(m_.values) + info.offset,
                          static_cast<float*>(v_.values) + info.offset, info.size, args.lr, c.beta1, c.beta2, c.eps,
                          wd, args.bc1, args.bc2, clip_scale, s);
        continue;
      }
      args.weight_decay = wd;
      cuda::AdamWUpdate(w, g, Ref(m_, t), Ref(v_, t), info.size, args, s);
    }
    if (overlap_) MOE_CUDA_CHECK(cudaEventRecord(group_done_[group], update_stream_));
  }
  if (overlap_) {
    MOE_CUDA_CHECK(cudaEventRecord(all_done_, update_stream_));
    in_flight_ = true;
    return;
  }
  // Muon: momentum in m; one Newton-Schulz run per planned chunk of tensors.
  for (const kernels::MuonChunk& chunk : muon_chunks_) {
    muon_group_.clear();
    for (size_t j : chunk.tensors) {
      const size_t t = muon_tensors_[j];
      const ParamInfo& info = params[t];
      cuda::MuonTensor m;
      m.w = weights.Ref(info, step);
      m.grad = grads.Ref(info);
      m.momentum = Ref(m_, t);
      m.rows = static_cast<int>(info.shape[info.shape.size() - 2]);
      m.cols = static_cast<int>(info.shape.back());
      m.batch = info.size / (int64_t{m.rows} * m.cols);
      m.weight_decay = info.decay ? static_cast<float>(weight_decay) : 0.f;
      muon_group_.push_back(m);
    }
    cuda::MuonUpdateGroup(blas, muon_, bf16_ ? cuda::DType::kBF16 : cuda::DType::kF32, muon_group_.data(),
                          muon_group_.size(), static_cast<float>(muon_lr), clip_scale, stream_);
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void DeviceOptimizer::CopyToHost(bool is_m, std::vector<float>* out) {
  Stored& s = is_m ? m_ : v_;
  Join(stream_);
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (format_ == StateFormat::kFp32) {  // straight into `out`: one host copy of the state (checkpoints of 9B models)
    out->resize(static_cast<size_t>(layout_.total()));
    MOE_CUDA_CHECK(cudaMemcpyAsync(out->data(), s.values, sizeof(float) * out->size(), cudaMemcpyDeviceToHost,
                                   stream_));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  OptimizerStateBuffer host(layout_, format_, s.is_signed);
  host.Allocate();
  MOE_CUDA_CHECK(cudaMemcpyAsync(host.raw_values(), s.values, host.raw_value_bytes(), cudaMemcpyDeviceToHost, stream_));
  if (format_ == StateFormat::kInt8) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(host.scales(), s.scales, sizeof(float) * host.blocks(), cudaMemcpyDeviceToHost,
                                   stream_));
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  host.ReadAll(out);
}

void DeviceOptimizer::CopyFromHost(bool is_m, const std::vector<float>& in) {
  Stored& s = is_m ? m_ : v_;
  Join(stream_);
  const size_t total = static_cast<size_t>(layout_.total());
  // A short `in` is padded with zeros; a full one is used as it is (no second host copy).
  std::vector<float> padded;
  if (in.size() < total) {
    padded.assign(in.begin(), in.end());
    padded.resize(total, 0.f);
  }
  const std::vector<float>& full = in.size() < total ? padded : in;
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (format_ == StateFormat::kFp32) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(s.values, full.data(), sizeof(float) * total, cudaMemcpyHostToDevice, stream_));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  OptimizerStateBuffer host(layout_, format_, s.is_signed);
  host.Allocate();
  host.WriteAll(full);
  MOE_CUDA_CHECK(cudaMemcpyAsync(s.values, host.raw_values(), host.raw_value_bytes(), cudaMemcpyHostToDevice, stream_));
  if (format_ == StateFormat::kInt8) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(s.scales, host.scales(), sizeof(float) * host.blocks(), cudaMemcpyHostToDevice,
                                   stream_));
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));  // `host` goes out of scope
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
