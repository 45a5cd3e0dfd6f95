#include "worker/train/checkpoint_recipe.h"

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/schedule.h"
#include "worker/model/model_config.h"

namespace moe {
namespace {

std::string Num(double v) { return absl::StrFormat("%g", v); }
std::string Bool(bool v) { return v ? "true" : "false"; }

std::string ActivationText(ModelConfig::Activation a) {
  switch (a) {
    case ModelConfig::Activation::kRelu2: return "relu2";
    case ModelConfig::Activation::kGelu: return "gelu";
    case ModelConfig::Activation::kSwiglu: break;
  }
  return "swiglu";
}

std::string ScheduleText(moe::v1::Schedule s) {
  switch (s) {
    case moe::v1::SCHEDULE_WSD: return "wsd";
    case moe::v1::SCHEDULE_CONSTANT: return "constant";
    default: break;
  }
  return "cosine";
}

std::string PrecisionText(moe::v1::Precision p) { return p == moe::v1::PRECISION_BF16 ? "bf16" : "fp32"; }

std::string StateText(ModelConfig::State s) {
  switch (s) {
    case ModelConfig::State::kBf16: return "bf16";
    case ModelConfig::State::kInt8: return "int8";
    case ModelConfig::State::kFp32: break;
  }
  return "fp32";
}

// A spec as the checks read it: the model's settings with their defaults applied (ModelConfig's
// reading, so a spec that leaves a key out agrees with one that names its default), and train.*.
struct Settings {
  ModelConfig model;
  moe::v1::TrainSpec train;
};

Settings Read(const moe::v1::JobSpec& spec, int vocab) {
  return {ModelConfig::FromSpec(spec, vocab), spec.train()};
}

using Text = std::function<std::string(const Settings&)>;
using Options = std::vector<std::pair<const char*, Text>>;

struct Differing {
  std::string key, was, now;  // was: the checkpoint's, now: this job's
};

std::vector<Differing> Compare(const Settings& a, const Settings& b, const Options& options) {
  std::vector<Differing> out;
  for (const auto& [key, text] : options) {
    std::string was = text(a), now = text(b);
    if (was != now) out.push_back({key, std::move(was), std::move(now)});
  }
  return out;
}

// One line per option that differs, "<key>: <a> in the checkpoint, <b> in this job".
std::string Lines(const std::vector<Differing>& diffs) {
  std::string out;
  for (const Differing& d : diffs) {
    absl::StrAppend(&out, out.empty() ? "" : "\n", d.key, ": ", d.was, " in the checkpoint, ", d.now, " in this job");
  }
  return out;
}

Text ModelNum(int ModelConfig::*field) {
  return [field](const Settings& s) { return std::to_string(s.model.*field); };
}

}  // namespace

std::string RecipeDifference(const moe::v1::JobSpec& saved, const moe::v1::JobSpec& job) {
  const Options options = {
      {"model.attention.rope_theta", [](const Settings& s) { return Num(s.model.rope_theta); }},
      {"model.attention.qk_norm", [](const Settings& s) { return Bool(s.model.qk_norm); }},
      {"model.attention.gate", [](const Settings& s) { return Bool(s.model.attn_gate); }},
      {"model.moe.activation", [](const Settings& s) { return ActivationText(s.model.activation); }},
      {"model.moe.shared_experts", ModelNum(&ModelConfig::shared_experts)},
      {"model.moe.shared_expert_hidden",
       [](const Settings& s) { return s.model.shared_experts > 0 ? std::to_string(s.model.shared_ffn) : std::string("-"); }},
      {"model.moe.router_score", [](const Settings& s) { return std::string(s.model.router_sigmoid ? "sigmoid" : "softmax"); }},
      {"model.moe.router_temperature", [](const Settings& s) { return Num(s.model.router_temperature); }},
      {"model.moe.bias_update_rate", [](const Settings& s) { return Num(s.model.bias_update_rate); }},
      {"train.optimizer", [](const Settings& s) { return std::string(s.model.muon ? "muon" : "adamw"); }},
  };
  return Lines(Compare(Read(saved, 0), Read(job, 0), options));
}

std::string ModelShapeDifference(const moe::v1::JobSpec& saved, int saved_vocab, const moe::v1::JobSpec& job,
                                 int job_vocab) {
  const Options options = {
      {"model.vocab_size", ModelNum(&ModelConfig::vocab)},
      {"model.d_model", ModelNum(&ModelConfig::d)},
      {"model.n_layers", ModelNum(&ModelConfig::layers)},
      {"model.n_heads", ModelNum(&ModelConfig::heads)},
      {"model.n_kv_heads", ModelNum(&ModelConfig::kv_heads)},
      {"model.tie_embeddings", [](const Settings& s) { return Bool(s.model.tied); }},
      {"model.moe.num_experts", ModelNum(&ModelConfig::experts)},
      {"model.moe.top_k", ModelNum(&ModelConfig::top_k)},
      {"model.moe.expert_hidden", ModelNum(&ModelConfig::ffn)},
  };
  return Lines(Compare(Read(saved, saved_vocab), Read(job, job_vocab), options));
}

std::string DataStreamDifference(const moe::v1::JobSpec& saved, const moe::v1::JobSpec& job) {
  const Options options = {{"model.seq_len", ModelNum(&ModelConfig::seq_len)}};
  return Lines(Compare(Read(saved, 0), Read(job, 0), options));
}

std::string ResumeChanges(const moe::v1::JobSpec& saved, const moe::v1::JobSpec& job) {
  auto train_num = [](double (moe::v1::TrainSpec::*field)() const) {
    return Text([field](const Settings& s) { return Num((s.train.*field)()); });
  };
  const Options options = {
      {"model.dropout", [](const Settings& s) { return Num(s.model.dropout); }},
      {"model.attention.dropout", [](const Settings& s) { return Num(s.model.attn_dropout); }},
      {"model.moe.expert_dropout", [](const Settings& s) { return Num(s.model.expert_dropout); }},
      {"model.moe.capacity_factor", [](const Settings& s) { return Num(s.model.capacity_factor); }},
      {"model.moe.aux_loss_coef", [](const Settings& s) { return Num(s.model.aux_coef); }},
      {"model.moe.z_loss_coef", [](const Settings& s) { return Num(s.model.z_coef); }},
      {"train.steps", [](const Settings& s) { return std::to_string(s.train.steps()); }},
      {"train.lr", train_num(&moe::v1::TrainSpec::lr)},
      {"train.min_lr", train_num(&moe::v1::TrainSpec::min_lr)},
      {"train.warmup_steps", [](const Settings& s) { return std::to_string(s.train.warmup_steps()); }},
      {"train.schedule", [](const Settings& s) { return ScheduleText(s.train.schedule()); }},
      {"train.decay_fraction", [](const Settings& s) { return Num(DecayFraction(s.train)); }},
      {"train.weight_decay", train_num(&moe::v1::TrainSpec::weight_decay)},
      {"train.beta1", [](const Settings& s) { return Num(s.model.adam_beta1); }},
      {"train.beta2", [](const Settings& s) { return Num(s.model.adam_beta2); }},
      {"train.grad_clip", train_num(&moe::v1::TrainSpec::grad_clip)},
      {"train.muon_lr", [](const Settings& s) { return s.model.muon ? Num(MuonPeakLr(s.train)) : std::string("-"); }},
      // The sampler is stateless (a step's batch is a function of seed, step and batch shape), so
      // these change the batches from here on but lose nothing.
      {"train.seed", [](const Settings& s) { return std::to_string(s.train.seed()); }},
      {"train.batch_size", [](const Settings& s) { return std::to_string(s.train.batch_size()); }},
      {"train.grad_accum", [](const Settings& s) { return std::to_string(std::max(1, s.train.grad_accum())); }},
      // How the step computes and stores: the checkpoint holds fp32 weights and moments either way.
      {"train.precision", [](const Settings& s) { return PrecisionText(s.train.precision()); }},
      {"train.master_weights", [](const Settings& s) { return std::string(s.model.bf16_master ? "bf16" : "fp32"); }},
      {"train.optimizer_state", [](const Settings& s) { return StateText(s.model.optimizer_state); }},
      {"train.recompute", [](const Settings& s) { return std::string(s.model.recompute ? "full" : "none"); }},
  };
  std::string out;
  for (const Differing& d : Compare(Read(saved, 0), Read(job, 0), options)) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", d.key, " ", d.was, " -> ", d.now);
  }
  return out;
}

}  // namespace moe
