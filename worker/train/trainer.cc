#include "worker/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model_stats.h"
#include "common/schedule.h"
#include "google/protobuf/util/json_util.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/train/make_model.h"
#include "worker/train/signals.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a ^ (b + 0x9E3779B97F4A7C15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr uint64_t kTrainStream = 0;
constexpr uint64_t kValStream = 1;

}  // namespace

Trainer::Trainer(const moe::v1::JobSpec& spec, Communicator* comm, Dataset* data,
                 TrainerOptions opts)
    : spec_(spec),
      comm_(comm),
      data_(data),
      opts_(std::move(opts)),
      cfg_(ModelConfig::FromSpec(spec, data->vocab_size)) {
  absl::StatusOr<std::unique_ptr<TrainModel>> model = MakeTrainModel(spec, cfg_, comm);
  if (!model.ok()) {
    init_status_ = model.status();
  } else {
    model_ = std::move(*model);
    model_->InitParams(spec.train().seed());
  }
  const auto& t = spec.train();
  micro_batch_ = t.batch_size() / (t.grad_accum() * comm->world_size());
}

StepResult Trainer::Step(int64_t step) {
  const auto& t = spec_.train();
  const int T = cfg_.seq_len, A = t.grad_accum(), W = comm_->world_size(), r = comm_->rank();
  const int global_micro = t.batch_size() / A;  // sequences per micro-step over all ranks
  const double lr = LearningRateAt(static_cast<int>(step), t.steps(), t.lr(), t.min_lr(), t.warmup_steps());
  const auto t0 = Clock::now();

  model_->ZeroGrads();
  std::vector<int32_t> x(static_cast<size_t>(micro_batch_) * T), y(x.size());
  double ce_sum = 0, aux = 0, z = 0, fwd_s = 0, bwd_s = 0;
  std::vector<MoeLayerForwardStats> layer_stats;
  for (int a = 0; a < A; ++a) {
    // Micro-step a takes global sequences [a * global_micro, (a+1) * global_micro); this rank
    // its slice of them, so the step sees the same batch for any number of ranks.
    const int first_seq = a * global_micro + r * (global_micro / W);
    SampleBatch(data_->train, t.seed(), kTrainStream, step, first_seq, micro_batch_, T, x.data(), y.data());
    BatchContext ctx;
    ctx.train = true;
    ctx.dropout_seed = Mix(Mix(t.seed(), static_cast<uint64_t>(step)), static_cast<uint64_t>(a));
    ctx.first_token = static_cast<int64_t>(first_seq) * T;
    ctx.global_tokens = static_cast<int64_t>(global_micro) * T;
    ctx.loss_scale = 1.0f / (static_cast<float>(t.batch_size()) * T);
    ctx.last_micro_step = a == A - 1;
    const auto f0 = Clock::now();
    ForwardResult res = model_->Forward(x.data(), y.data(), micro_batch_, ctx);
    const auto f1 = Clock::now();
    model_->Backward();
    const auto f2 = Clock::now();
    fwd_s += Seconds(f0, f1);
    bwd_s += Seconds(f1, f2);
    ce_sum += res.ce_sum;
    aux += res.aux_loss / A;
    z += res.z_loss / A;
    if (layer_stats.empty()) {
      layer_stats = std::move(res.layers);
    } else {
      for (size_t l = 0; l < layer_stats.size(); ++l) {
        for (size_t e = 0; e < layer_stats[l].routed.size(); ++e) layer_stats[l].routed[e] += res.layers[l].routed[e];
        layer_stats[l].dropped += res.layers[l].dropped;
        layer_stats[l].assignments += res.layers[l].assignments;
        layer_stats[l].entropy_sum += res.layers[l].entropy_sum;
      }
    }
  }

  // Reduce: replicated-weight gradients are summed over ranks (each rank's loss is already
  // scaled by 1 / tokens in the global step); an expert's gradient already holds every rank's
  // tokens. Then the global norm: the dense part is identical everywhere, experts are summed.
  const auto o0 = Clock::now();
  const CommSeconds comm_s = model_->ReduceGrads();
  double dense_sq = 0, expert_sq = 0;
  model_->GradSquaredNorms(&dense_sq, &expert_sq);
  double red[4] = {ce_sum, expert_sq, StopRequested() ? 1.0 : 0.0, CheckpointRequested() ? 1.0 : 0.0};
  comm_->AllReduceSum(red, 4);
  const double grad_norm = std::sqrt(dense_sq + red[1]);
  const double clip = t.grad_clip();
  const float clip_scale = (clip > 0 && grad_norm > clip) ? static_cast<float>(clip / (grad_norm + 1e-6)) : 1.0f;
  model_->AdamWStep(step + 1, lr, t.weight_decay(), clip_scale);
  const auto t1 = Clock::now();

  // Metrics of this step.
  const double tokens = static_cast<double>(t.batch_size()) * T;
  const double step_s = Seconds(t0, t1);
  moe::v1::MetricPoint p;
  p.set_step(step + 1);
  p.set_loss(red[0] / tokens);
  p.set_aux_loss(aux);
  p.set_z_loss(z);
  p.set_lr(lr);
  p.set_grad_norm(grad_norm);
  p.set_step_ms(step_s * 1e3);
  p.set_tokens_per_s(tokens / step_s);
  if (spec_.resources().device() == moe::v1::DEVICE_CUDA) {
    p.set_mfu(ComputeModelStats(spec_).flops_per_token * tokens / step_s / 989e12);
  }
  auto* times = p.mutable_times();
  const double a2a = comm_s.all_to_all, ar = comm_s.all_reduce;
  times->set_all_to_all_ms(a2a * 1e3);
  times->set_all_reduce_ms(ar * 1e3);
  times->set_compute_ms(std::max(0.0, step_s - a2a - ar) * 1e3);
  times->set_forward_ms(fwd_s * 1e3);
  times->set_backward_ms(bwd_s * 1e3);
  times->set_optimizer_ms(Seconds(o0, t1) * 1e3);
  for (size_t l = 0; l < layer_stats.size() && cfg_.is_moe(); ++l) {
    const MoeLayerForwardStats& s = layer_stats[l];
    auto* ls = p.add_layers();
    ls->set_layer(static_cast<int>(l));
    int64_t max_routed = 0, sum_routed = 0;
    for (int64_t c : s.routed) {
      ls->add_tokens_per_expert(c);
      max_routed = std::max(max_routed, c);
      sum_routed += c;
    }
    const double mean = static_cast<double>(sum_routed) / s.routed.size();
    ls->set_load_imbalance(mean > 0 ? max_routed / mean : 0);
    ls->set_drop_rate(s.assignments > 0 ? static_cast<double>(s.dropped) / s.assignments : 0);
    ls->set_router_entropy(s.entropy_sum / (s.assignments / cfg_.top_k));
  }
  StepResult result;
  result.metrics = std::move(p);
  result.stop_requested = red[2] > 0;
  result.checkpoint_requested = red[3] > 0;
  return result;
}

double Trainer::Evaluate() {
  const auto& t = spec_.train();
  const int T = cfg_.seq_len, A = t.grad_accum(), W = comm_->world_size(), r = comm_->rank();
  const int global_micro = t.batch_size() / A;
  std::vector<int32_t> x(static_cast<size_t>(micro_batch_) * T), y(x.size());
  double ce_sum = 0;
  for (int i = 0; i < t.eval_batches(); ++i) {
    // The same held-out batches at every evaluation, so val curves are comparable.
    SampleBatch(data_->val, t.seed(), kValStream, i, r * (global_micro / W), micro_batch_, T, x.data(), y.data());
    BatchContext ctx;
    ctx.train = false;
    ctx.first_token = static_cast<int64_t>(r) * (global_micro / W) * T;
    ctx.global_tokens = static_cast<int64_t>(global_micro) * T;
    ctx.loss_scale = 1.0f / ctx.global_tokens;
    ce_sum += model_->Forward(x.data(), y.data(), micro_batch_, ctx).ce_sum;
  }
  comm_->AllReduceSum(&ce_sum, 1);
  return ce_sum / (static_cast<double>(t.eval_batches()) * global_micro * T);
}

void Trainer::Log(const std::string& line) {
  if (comm_->rank() != 0) return;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (opts_.on_log) opts_.on_log(line);
}

void Trainer::Emit(const moe::v1::MetricPoint& point) {
  history_.push_back(point);
  if (comm_->rank() != 0) return;
  std::string line = absl::StrFormat(
      "{\"step\": %d, \"loss\": %.6f, \"aux_loss\": %.6f, \"z_loss\": %.6f, \"lr\": %.6g, "
      "\"grad_norm\": %.4f, \"tokens_per_s\": %.1f, \"step_ms\": %.1f, \"all_to_all_ms\": %.2f, "
      "\"all_reduce_ms\": %.2f",
      point.step(), point.loss(), point.aux_loss(), point.z_loss(), point.lr(), point.grad_norm(),
      point.tokens_per_s(), point.step_ms(), point.times().all_to_all_ms(), point.times().all_reduce_ms());
  if (point.has_val_loss()) absl::StrAppendFormat(&line, ", \"val_loss\": %.6f", point.val_loss());
  if (point.layers_size() > 0) {
    double imb = 0, drop = 0;
    for (const auto& l : point.layers()) {
      imb = std::max(imb, l.load_imbalance());
      drop += l.drop_rate() / point.layers_size();
    }
    absl::StrAppendFormat(&line, ", \"max_load_imbalance\": %.3f, \"drop_rate\": %.4f", imb, drop);
  }
  line += "}";
  Log(line);
  if (opts_.on_metrics) opts_.on_metrics(point);
}

absl::Status Trainer::Run(TrainOutcome* outcome) {
  if (!init_status_.ok()) return init_status_;
  const auto& t = spec_.train();
  int64_t step = 0;
  if (opts_.resume && !opts_.checkpoint_dir.empty()) {
    absl::StatusOr<std::string> latest = NewestGoodCheckpoint(
        opts_.checkpoint_dir, spec_.checkpoint().start_over_if_damaged(), [this](const std::string& m) { Log(m); });
    if (latest.ok()) {
      absl::Status st = LoadCheckpoint(*latest, &step);
      if (!st.ok()) return st;
      Log(absl::StrCat("resumed from ", *latest, " at step ", step));
    } else if (!absl::IsNotFound(latest.status())) {
      return latest.status();
    }
  }
  const int64_t last = opts_.max_steps >= 0 ? std::min<int64_t>(t.steps(), step + opts_.max_steps) : t.steps();
  const int log_every = std::max(1, t.log_every());
  *outcome = TrainOutcome::kFinished;
  while (step < last) {
    StepResult r = Step(step);
    ++step;
    moe::v1::MetricPoint& p = r.metrics;
    const bool stop = r.stop_requested;
    const bool ckpt_now = r.checkpoint_requested;
    p.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count());
    const bool eval = (t.eval_every() > 0 && step % t.eval_every() == 0) || step == t.steps();
    if (eval) {
      p.set_has_val_loss(true);
      p.set_val_loss(Evaluate());
    }
    if (eval || step % log_every == 0 || step == last || step == 1) Emit(p);
    if (opts_.on_step) opts_.on_step(step);
    const int every = spec_.checkpoint().every();
    if (!opts_.checkpoint_dir.empty() &&
        (stop || ckpt_now || step == last || (every > 0 && step % every == 0))) {
      absl::Status st = SaveCheckpoint(step);
      if (!st.ok()) return st;
    }
    if (stop) {
      Log(absl::StrCat("stop requested: checkpointed at step ", step, ", exiting"));
      *outcome = TrainOutcome::kStopped;
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::SaveCheckpoint(int64_t steps_done) {
  // Rank 0 gathers each expert tensor (E_local experts from every rank, in rank order = global
  // expert order) and writes one checkpoint with every tensor by its global shape.
  const int W = comm_->world_size();
  const bool root = comm_->rank() == 0;
  Checkpoint ckpt;
  ckpt.step = steps_done;
  google::protobuf::util::MessageToJsonString(spec_, &ckpt.spec_json);
  if (data_->tokenizer) ckpt.tokenizer = data_->tokenizer->Serialize();
  ckpt.meta["world_size"] = std::to_string(W);
  ckpt.meta["vocab_size"] = std::to_string(cfg_.vocab);
  const std::pair<const char*, ParamSet> sets[] = {
      {"", ParamSet::kParams}, {"adam_m.", ParamSet::kAdamM}, {"adam_v.", ParamSet::kAdamV}};
  std::vector<float> host;
  for (const auto& [prefix, set] : sets) {
    model_->CopyToHost(set, &host);
    const std::vector<float>* buf = &host;
    for (const ParamInfo& info : model_->layout().params()) {
      NamedTensor nt;
      nt.name = std::string(prefix) + info.name;
      nt.shape = info.global_shape;
      const float* src = buf->data() + info.offset;
      if (info.expert && W > 1) {
        if (root) nt.data.resize(static_cast<size_t>(info.size) * W);
        comm_->Gather(src, info.size, root ? nt.data.data() : nullptr, 0);
      } else if (root) {
        nt.data.assign(src, src + info.size);
      }
      if (root) ckpt.tensors.push_back(std::move(nt));
    }
  }
  absl::Status st = absl::OkStatus();
  if (root) st = WriteCheckpoint(opts_.checkpoint_dir, ckpt, std::max(1, spec_.checkpoint().keep()));
  // Every rank learns whether the write worked, so none goes on alone.
  double ok = st.ok() ? 1.0 : 0.0;
  comm_->Broadcast(&ok, sizeof(ok), 0);
  if (!root && ok == 0) return absl::InternalError("rank 0 failed to write the checkpoint");
  if (st.ok() && root) Log(absl::StrCat("checkpoint written at step ", steps_done, " in ", opts_.checkpoint_dir));
  return st;
}

absl::Status Trainer::LoadCheckpoint(const std::string& path, int64_t* steps_done) {
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(path);
  if (!ckpt.ok()) return ckpt.status();
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
  // Host copies of the three buffers: the checkpoint fills them, then they go back.
  std::vector<float> params, adam_m, adam_v;
  model_->CopyToHost(ParamSet::kParams, &params);
  model_->CopyToHost(ParamSet::kAdamM, &adam_m);
  model_->CopyToHost(ParamSet::kAdamV, &adam_v);
  const std::pair<const char*, std::vector<float>*> sets[] = {
      {"", &params}, {"adam_m.", &adam_m}, {"adam_v.", &adam_v}};
  for (const auto& set : sets) {
    for (const ParamInfo& info : model_->layout().params()) expected.emplace_back(set.first + info.name, info.global_shape);
  }
  absl::Status st = CheckCompatible(*ckpt, expected);
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, " does not fit this job's model: ", st.message()));
  }
  // Each rank takes its own slice of every expert tensor (experts by global index).
  for (const NamedTensor& nt : ckpt->tensors) {
    for (const auto& [prefix, buf] : sets) {
      const std::string p(prefix);
      if (nt.name.compare(0, p.size(), p) != 0) continue;
      const ParamInfo* info = model_->layout().Find(nt.name.substr(p.size()));
      if (info == nullptr) continue;
      const size_t first = info->expert ? static_cast<size_t>(model_->layout().expert_begin()) * (info->size / info->shape[0]) : 0;
      std::copy(nt.data.begin() + first, nt.data.begin() + first + info->size, buf->begin() + info->offset);
      break;
    }
  }
  model_->CopyFromHost(ParamSet::kParams, params);
  model_->CopyFromHost(ParamSet::kAdamM, adam_m);
  model_->CopyFromHost(ParamSet::kAdamV, adam_v);
  *steps_done = ckpt->step;
  return absl::OkStatus();
}

}  // namespace moe
