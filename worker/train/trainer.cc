#include "worker/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/model_stats.h"
#include "common/number_text.h"
#include "common/schedule.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/model/allocation_error.h"
#include "worker/model/moe_bookkeeping.h"
#include "worker/train/make_model.h"
#include "worker/train/signals.h"
#include "worker/train/step_metrics.h"

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

// What the ranks agree on at the end of a step.
struct StepAgreement {
  double ce_sum = 0;                  // sum of CE over the step's tokens, all ranks
  double expert_sq = 0;               // squared L2 norm of all expert gradients
  int64_t peak_memory_bytes = 0;      // the largest rank's high-water mark
  bool stop_requested = false;        // some rank got SIGTERM/SIGINT
  bool checkpoint_requested = false;  // some rank got SIGUSR1
};

// One small all-reduce of 4 + W doubles. The maximum rides on the sum: each rank writes its
// peak into its own slot and zeros elsewhere, so the sum holds every rank's peak (exact in a
// double up to 2^53 bytes).
StepAgreement AgreeOnStep(Communicator* comm, double ce_sum, double expert_sq, int64_t peak_memory_bytes,
                          bool stop) {
  std::vector<double> v(4 + static_cast<size_t>(comm->world_size()), 0.0);
  v[0] = ce_sum;
  v[1] = expert_sq;
  v[2] = stop ? 1.0 : 0.0;
  v[3] = CheckpointRequested() ? 1.0 : 0.0;
  v[4 + comm->rank()] = static_cast<double>(peak_memory_bytes);
  comm->AllReduceSum(v.data(), static_cast<int64_t>(v.size()));
  StepAgreement out;
  out.ce_sum = v[0];
  out.expert_sq = v[1];
  out.stop_requested = v[2] > 0;
  out.checkpoint_requested = v[3] > 0;
  out.peak_memory_bytes = static_cast<int64_t>(*std::max_element(v.begin() + 4, v.end()));
  return out;
}

// Runs one step's work (1-based `step`); memory it cannot get ends the run with the step named
// (AllocationError::InStep): a backend's own AllocationError, or any other std::bad_alloc (a
// host buffer of the step: activations, batches) as host memory.
template <typename F>
auto InStep(int64_t step, F&& work) -> decltype(work()) {
  try {
    return work();
  } catch (const AllocationError& e) {
    throw e.InStep(step);
  } catch (const std::bad_alloc&) {
    throw AllocationError("could not allocate the step's host buffers (activations, batches)",
                          AllocationError::Memory::kHost)
        .InStep(step);
  }
}

// What to change when the loss stops being a number: the learning rate first, then the
// coefficients that weigh the router's losses when they are large enough to be the cause.
std::string DivergenceAdvice(const moe::v1::JobSpec& spec) {
  const auto& t = spec.train();
  const auto& e = spec.model().moe();
  std::string advice = absl::StrCat("lower train.lr (", t.lr(), ")");
  if (e.aux_loss_coef() > 1) absl::StrAppend(&advice, " or model.moe.aux_loss_coef (", e.aux_loss_coef(), ")");
  if (e.z_loss_coef() > 1) absl::StrAppend(&advice, " or model.moe.z_loss_coef (", e.z_loss_coef(), ")");
  // Scores of logits / tau: the router's gradient grows as 1 / tau.
  if (e.router_temperature() > 0 && e.router_temperature() < 0.1) {
    absl::StrAppend(&advice, " or raise model.moe.router_temperature (", e.router_temperature(),
                    ": the router's gradient grows as 1 / temperature)");
  }
  absl::StrAppend(&advice, ", or the options that scale updates (weight_decay, muon_lr), or raise warmup_steps");
  return advice;
}

// A run that diverged or broke down at a step: why, what to change, and what happens to the
// checkpoints.
absl::Status StepFailed(absl::string_view why, const moe::v1::JobSpec& spec, absl::string_view more = "") {
  return absl::FailedPreconditionError(absl::StrCat(
      why, DivergenceAdvice(spec), more, "; no checkpoint is written from this step, the older ones are kept"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const moe::v1::JobSpec& spec, Communicator* comm,
                                                          Dataset* data, TrainerOptions opts) {
  absl::StatusOr<std::unique_ptr<TrainModel>> model =
      MakeTrainModel(spec, ModelConfig::FromSpec(spec, data->vocab_size), comm);
  if (!model.ok()) return model.status();
  return Create(spec, comm, data, std::move(opts), std::move(*model));
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const moe::v1::JobSpec& spec, Communicator* comm,
                                                          Dataset* data, TrainerOptions opts,
                                                          std::unique_ptr<TrainModel> model) {
  if (model == nullptr) return absl::InvalidArgumentError("no model to train");
  model->InitParams(spec.train().seed());
  return std::unique_ptr<Trainer>(new Trainer(spec, comm, data, std::move(opts), std::move(model)));
}

Trainer::Trainer(const moe::v1::JobSpec& spec, Communicator* comm, Dataset* data, TrainerOptions opts,
                 std::unique_ptr<TrainModel> model)
    : spec_(spec),
      comm_(comm),
      data_(data),
      opts_(std::move(opts)),
      cfg_(model->config()),
      model_(std::move(model)) {
  const auto& t = spec.train();
  micro_batch_ = t.batch_size() / (t.grad_accum() * comm->world_size());
  // The model's FLOPs with the vocabulary it was built with (the spec may leave it to the data).
  moe::v1::JobSpec sized = spec;
  sized.mutable_model()->set_vocab_size(cfg_.vocab);
  flops_per_token_ = ComputeModelStats(sized).flops_per_token;
}

BatchContext Trainer::SampleMicroBatch(int64_t step, int a, int32_t* x, int32_t* y) const {
  const auto& t = spec_.train();
  const int T = cfg_.seq_len, A = t.grad_accum(), W = comm_->world_size(), r = comm_->rank();
  const int global_micro = t.batch_size() / A;  // sequences per micro-step over all ranks
  // Micro-step a takes global sequences [a * global_micro, (a+1) * global_micro); this rank
  // its slice of them, so the step sees the same batch for any number of ranks.
  const int first_seq = a * global_micro + r * (global_micro / W);
  SampleBatch(data_->train, t.seed(), kTrainStream, step, first_seq, micro_batch_, T, x, y);
  BatchContext ctx;
  ctx.train = true;
  ctx.dropout_seed = Mix(Mix(t.seed(), static_cast<uint64_t>(step)), static_cast<uint64_t>(a));
  ctx.first_token = static_cast<int64_t>(first_seq) * T;
  ctx.global_tokens = static_cast<int64_t>(global_micro) * T;
  ctx.loss_scale = 1.0f / (static_cast<float>(t.batch_size()) * T);
  ctx.last_micro_step = a == A - 1;
  return ctx;
}

StepResult Trainer::Step(int64_t step) {
  const auto& t = spec_.train();
  const int A = t.grad_accum();
  StepMeasurements m;
  m.step = step + 1;
  m.lr = LearningRateAt(t, static_cast<int>(step));
  const auto t0 = Clock::now();

  // Forward and backward, micro-step by micro-step; gradients accumulate in the model.
  model_->ZeroGrads();
  std::vector<int32_t> x(static_cast<size_t>(micro_batch_) * cfg_.seq_len), y(x.size());
  double ce_sum = 0;
  for (int a = 0; a < A; ++a) {
    const BatchContext ctx = SampleMicroBatch(step, a, x.data(), y.data());
    const auto f0 = Clock::now();
    ForwardResult res = model_->Forward(x.data(), y.data(), micro_batch_, ctx);
    const auto f1 = Clock::now();
    model_->Backward();
    const auto f2 = Clock::now();
    m.forward_seconds += Seconds(f0, f1);
    m.backward_seconds += Seconds(f1, f2);
    ce_sum += res.ce_sum;
    m.aux_loss += res.aux_loss / A;
    m.z_loss += res.z_loss / A;
    if (cfg_.is_moe()) {
      m.layers.resize(res.layers.size());
      for (size_t l = 0; l < res.layers.size(); ++l) m.layers[l].Add(res.layers[l]);
    }
  }

  // Reduce: replicated-weight gradients are summed over ranks (each rank's loss is already
  // scaled by 1 / tokens in the global step); an expert's gradient already holds every rank's
  // tokens. Then the global norm: the dense part is identical everywhere, experts are summed.
  const auto o0 = Clock::now();
  m.comm = model_->ReduceGrads();
  double dense_sq = 0, expert_sq = 0;
  model_->GradSquaredNorms(&dense_sq, &expert_sq);
  const StepAgreement agreed = AgreeOnStep(comm_, ce_sum, expert_sq, model_->PeakMemoryBytes(), StopWanted());

  // Clip, then update.
  m.grad_norm = std::sqrt(dense_sq + agreed.expert_sq);
  const double clip = t.grad_clip();
  const float clip_scale = (clip > 0 && m.grad_norm > clip) ? static_cast<float>(clip / (m.grad_norm + 1e-6)) : 1.0f;
  // A gradient that is no number (its norm agreed on every rank) is not applied: Run stops on it
  // with the weights of the step before.
  if (std::isfinite(m.grad_norm)) {
    model_->OptimizerStep(step + 1, m.lr, MuonLearningRateAt(t, static_cast<int>(step)), t.weight_decay(),
                          clip_scale);
    if (cfg_.balances_by_bias()) UpdateBiases(&m);
  }
  const auto t1 = Clock::now();

  m.tokens = static_cast<double>(t.batch_size()) * cfg_.seq_len;
  m.loss = agreed.ce_sum / m.tokens;
  m.step_seconds = Seconds(t0, t1);
  m.optimizer_seconds = Seconds(o0, t1);
  m.world_size = comm_->world_size();
  m.flops_per_token = flops_per_token_;
  m.peak_flops_per_device = model_->PeakFlopsPerSecond();
  m.peak_memory_bytes = agreed.peak_memory_bytes;
  m.top_k = cfg_.top_k;
  StepResult result;
  result.metrics = BuildMetricPoint(m);
  result.stop_requested = agreed.stop_requested;
  result.checkpoint_requested = agreed.checkpoint_requested;
  return result;
}

void Trainer::UpdateBiases(StepMeasurements* m) {
  // The step's counts are global (summed over ranks in each forward) and summed over the
  // micro-steps here, so every rank makes the same update.
  std::vector<float> biases = model_->RouterBiases();
  if (biases.size() != static_cast<size_t>(cfg_.layers) * cfg_.experts) return;  // the backend keeps none
  UpdateRouterBiases(&biases, m->layers, cfg_.bias_update_rate, cfg_.experts);
  model_->SetRouterBiases(biases);
  m->router_bias_spread.clear();
  for (int l = 0; l < cfg_.layers; ++l) {
    m->router_bias_spread.push_back(RouterBiasSpread(biases.data() + static_cast<size_t>(l) * cfg_.experts, cfg_.experts));
  }
}

std::optional<double> Trainer::Evaluate() {
  const auto& t = spec_.train();
  const int T = cfg_.seq_len, A = t.grad_accum(), W = comm_->world_size(), r = comm_->rank();
  const int global_micro = t.batch_size() / A;
  std::vector<int32_t> x(static_cast<size_t>(micro_batch_) * T), y(x.size());
  double ce_sum = 0;
  // The same held-out batches at every evaluation, so val curves are comparable: eval_batches
  // batches of batch_size sequences, taken as training takes a step's (micro-batch a holds
  // sequences [a * global_micro, (a + 1) * global_micro), this rank its slice), so the loss is
  // the same for any grad_accum and number of ranks.
  for (int i = 0; i < t.eval_batches(); ++i) {
    for (int a = 0; a < A; ++a) {
      const int first_seq = a * global_micro + r * (global_micro / W);
      SampleBatch(data_->val, t.seed(), kValStream, i, first_seq, micro_batch_, T, x.data(), y.data());
      BatchContext ctx;
      ctx.train = false;
      ctx.first_token = static_cast<int64_t>(first_seq) * T;
      ctx.global_tokens = static_cast<int64_t>(global_micro) * T;
      ctx.loss_scale = 1.0f / ctx.global_tokens;
      ce_sum += model_->Forward(x.data(), y.data(), micro_batch_, ctx).ce_sum;
    }
    // A stop signal ends the evaluation after this batch (every rank agrees: the forward's
    // exchanges need them all); waiting out eval_batches could outlast moed's or Slurm's grace.
    double stop = StopWanted() ? 1.0 : 0.0;
    if (W > 1) comm_->AllReduceSum(&stop, 1);
    if (stop > 0) return std::nullopt;
  }
  comm_->AllReduceSum(&ce_sum, 1);
  return ce_sum / (static_cast<double>(t.eval_batches()) * t.batch_size() * T);
}

bool Trainer::StopWanted() const {
  return StopRequested() || (opts_.stop_requested && opts_.stop_requested());
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
  // Where the step went, the model FLOP utilisation and the memory high-water mark.
  absl::StrAppendFormat(&line, ", \"forward_ms\": %.1f, \"backward_ms\": %.1f, \"optimizer_ms\": %.1f",
                        point.times().forward_ms(), point.times().backward_ms(), point.times().optimizer_ms());
  if (point.mfu() > 0) absl::StrAppendFormat(&line, ", \"mfu\": %.4f", point.mfu());
  if (point.peak_memory_mb() > 0) absl::StrAppendFormat(&line, ", \"peak_memory_mb\": %.0f", point.peak_memory_mb());
  if (point.has_val_loss()) absl::StrAppendFormat(&line, ", \"val_loss\": %.6f", point.val_loss());
  if (point.layers_size() > 0) {
    double imb = 0, drop = 0;
    for (const auto& l : point.layers()) {
      imb = std::max(imb, l.load_imbalance());
      drop += l.drop_rate() / point.layers_size();
    }
    absl::StrAppendFormat(&line, ", \"max_load_imbalance\": %.3f, \"drop_rate\": %.4f", imb, drop);
    if (cfg_.expert_dropout > 0) {
      double off = 0;
      for (const auto& l : point.layers()) off += l.expert_dropout_rate() / point.layers_size();
      absl::StrAppendFormat(&line, ", \"expert_dropout_rate\": %.4f", off);
    }
    if (cfg_.balances_by_bias()) {
      double spread = 0;
      for (const auto& l : point.layers()) spread = std::max(spread, l.router_bias_spread());
      absl::StrAppendFormat(&line, ", \"max_router_bias_spread\": %.4g", spread);
    }
  }
  line += "}";
  // printf writes nan and inf, for which JSON has no word: a diverged step's line stays JSON.
  for (const std::string word : {": -nan", ": nan", ": -inf", ": inf"}) {
    for (size_t at = line.find(word); at != std::string::npos; at = line.find(word, at)) {
      line.replace(at, word.size(), ": null");
    }
  }
  Log(line);
  if (opts_.on_metrics) opts_.on_metrics(point);
}

absl::Status Trainer::Run(TrainOutcome* outcome) {
  const auto& t = spec_.train();
  int64_t step = 0;
  if (absl::Status st = ClaimCheckpointDir(); !st.ok()) return st;
  absl::Cleanup unlock = [this] { checkpoint_lock_.reset(); };  // the directory is free once Run ends
  bool resumed = false;
  std::optional<moe::v1::MetricPoint> missed_eval;  // the checkpoint's last step, its final evaluation skipped
  if (opts_.resume && !opts_.checkpoint_dir.empty()) {
    bool none_there = false;
    absl::StatusOr<CheckpointReader> latest = NewestGoodCheckpointReader(
        opts_.checkpoint_dir, spec_.checkpoint().start_over_if_damaged(), [this](const std::string& m) { Log(m); },
        &none_there);
    if (latest.ok()) {
      absl::Status st = LoadCheckpoint(*latest, &step);
      if (!st.ok()) return st;
      Log(absl::StrCat("resumed from ", latest->path(), " at step ", step));
      resumed = true;
      missed_eval = FinalEvalPending(*latest);
    } else if (!absl::IsNotFound(latest.status())) {
      return latest.status();
    } else if (none_there) {
      // (Damaged ones that start_over_if_damaged passes over were named by the reader already.)
      Log(absl::StrCat("resume: no checkpoint in ", opts_.checkpoint_dir, " yet; starting at step 0"));
    }
  }
  // A resumed job has its own weights; init_from only seeds a job's first step.
  if (!resumed && !spec_.model().init_from().empty()) {
    if (absl::Status st = InitFrom(spec_.model().init_from()); !st.ok()) return st;
  }
  const int64_t last = opts_.max_steps >= 0 ? std::min<int64_t>(t.steps(), step + opts_.max_steps) : t.steps();
  if (resumed && step >= t.steps()) {
    // A stop during the last step skipped its final evaluation: that alone is left to do.
    if (missed_eval.has_value() && step == t.steps()) return RunMissedFinalEval(step, *missed_eval, outcome);
    Log(absl::StrCat("nothing left to train: the checkpoint is at step ", step, " and train.steps is ", t.steps(),
                     "; raise train.steps to train on from it"));
  }
  const int log_every = std::max(1, t.log_every());
  *outcome = TrainOutcome::kFinished;
  // A SIGTERM/SIGINT that came while the model was built or a checkpoint read: no step of this
  // run has trained, so there is nothing to checkpoint (opts_.stop_requested is polled at the
  // steps' ends only, as it says). Every rank agrees.
  if (step < last) {
    double stop = StopRequested() ? 1.0 : 0.0;
    if (comm_->world_size() > 1) comm_->AllReduceSum(&stop, 1);
    if (stop > 0) {
      Log("stop requested before the first step: exiting, nothing to checkpoint");
      *outcome = TrainOutcome::kStopped;
      return absl::OkStatus();
    }
  }
  while (step < last) {
    StepResult r = InStep(step + 1, [&] { return Step(step); });
    ++step;
    moe::v1::MetricPoint& p = r.metrics;
    // Every rank has the same loss (summed over ranks), so all stop here together.
    if (!std::isfinite(p.loss())) {
      Emit(p);
      return StepFailed(absl::StrCat("the training diverged: the loss is ", p.loss(), " at step ", step, "; "), spec_);
    }
    if (!std::isfinite(p.grad_norm())) {
      Emit(p);
      return StepFailed(absl::StrCat("the training diverged: the gradient's norm is ", p.grad_norm(), " at step ",
                                     step, " (the loss was ", p.loss(), "), and the step's update was not applied; "),
                        spec_);
    }
    // Every gradient exactly 0 while the loss is above 0: nothing reaches the output (the
    // activations overflowed after too large an update, RMSNorm's mean square going to inf, or
    // were all dropped). The loss stays finite, so the checks above pass, and the run went on
    // to write checkpoints of a model that can no longer learn.
    if (p.grad_norm() == 0 && p.loss() > 1e-6) {
      Emit(p);
      return StepFailed(
          absl::StrCat("the training broke down: every gradient is 0 at step ", step, " while the loss is ", p.loss(),
                       ", so the model can no longer learn (its activations overflowed or were all dropped); "),
          spec_,
          spec_.model().dropout() > 0 ? absl::StrCat(", or lower model.dropout (", Shortest(spec_.model().dropout()), ")")
                                      : "");
    }
    bool stop = r.stop_requested;
    const bool ckpt_now = r.checkpoint_requested;
    p.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count());
    const bool eval = (t.eval_every() > 0 && step % t.eval_every() == 0) || step == t.steps();
    if (eval && !stop) {  // a stop skips it: the checkpoint below comes first (and, at the last step, keeps it pending)
      const std::optional<double> val = InStep(step, [&] { return Evaluate(); });
      if (val.has_value()) {
        p.set_has_val_loss(true);
        p.set_val_loss(*val);
      } else {
        Log(absl::StrCat("stop requested during the evaluation at step ", step, ": it has no val_loss"));
        stop = true;
      }
    }
    if (eval || step % log_every == 0 || step == last || step == 1) Emit(p);
    if (opts_.on_step) opts_.on_step(step);
    const int every = spec_.checkpoint().every();
    if (!opts_.checkpoint_dir.empty() &&
        (stop || ckpt_now || step == last || (every > 0 && step % every == 0))) {
      // The final evaluation a stop skipped waits in the checkpoint for the resume that runs it.
      const bool final_eval_missed = step == t.steps() && !p.has_val_loss();
      absl::Status st = SaveCheckpoint(step, final_eval_missed ? &p : nullptr);
      if (!st.ok()) return st;
      if (final_eval_missed) {
        Log(absl::StrCat("the final evaluation at step ", step,
                         " did not run: a resume runs it (moectl resume, or moe-worker --resume)"));
      }
    }
    if (stop) {
      Log(opts_.checkpoint_dir.empty() ? absl::StrCat("stop requested at step ", step, ", exiting (no checkpoint)")
                                       : absl::StrCat("stop requested: checkpointed at step ", step, ", exiting"));
      *outcome = TrainOutcome::kStopped;
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::RunMissedFinalEval(int64_t step, moe::v1::MetricPoint point, TrainOutcome* outcome) {
  Log(absl::StrCat("resumed at step ", step, ": running the final evaluation it missed"));
  *outcome = TrainOutcome::kFinished;
  const std::optional<double> val = InStep(step, [&] { return Evaluate(); });
  if (!val.has_value()) {
    Log(absl::StrCat("stop requested during the final evaluation at step ", step,
                     ": it has no val_loss; the checkpoint still has it to do, exiting"));
    *outcome = TrainOutcome::kStopped;
    return absl::OkStatus();
  }
  point.set_has_val_loss(true);
  point.set_val_loss(*val);
  Emit(point);
  if (opts_.on_step) opts_.on_step(step);
  // The step again, now without the mark: a later resume finds nothing left to do.
  return SaveCheckpoint(step);
}

}  // namespace moe
