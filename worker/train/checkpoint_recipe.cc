#include "worker/train/checkpoint_recipe.h"

#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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

using Text = std::function<std::string(const ModelConfig&)>;

// One line per option whose text differs between a and b, "<key>: <a> in the checkpoint, <b> in this job".
std::string Differences(const ModelConfig& a, const ModelConfig& b,
                        const std::vector<std::pair<const char*, Text>>& options) {
  std::string out;
  for (const auto& [key, text] : options) {
    const std::string was = text(a), now = text(b);
    if (was == now) continue;
    absl::StrAppend(&out, out.empty() ? "" : "\n", key, ": ", was, " in the checkpoint, ", now, " in this job");
  }
  return out;
}

}  // namespace

std::string RecipeDifference(const moe::v1::JobSpec& saved, const moe::v1::JobSpec& job) {
  // The options with their defaults applied (ModelConfig's reading), so a spec that leaves a key
  // out agrees with one that names its default.
  const ModelConfig a = ModelConfig::FromSpec(saved, 0), b = ModelConfig::FromSpec(job, 0);
  const std::vector<std::pair<const char*, Text>> options = {
      {"model.attention.rope_theta", [](const ModelConfig& c) { return Num(c.rope_theta); }},
      {"model.attention.qk_norm", [](const ModelConfig& c) { return Bool(c.qk_norm); }},
      {"model.attention.gate", [](const ModelConfig& c) { return Bool(c.attn_gate); }},
      {"model.attention.dropout", [](const ModelConfig& c) { return Num(c.attn_dropout); }},
      {"model.moe.activation", [](const ModelConfig& c) { return ActivationText(c.activation); }},
      {"model.moe.shared_experts", [](const ModelConfig& c) { return std::to_string(c.shared_experts); }},
      {"model.moe.shared_expert_hidden",
       [](const ModelConfig& c) { return c.shared_experts > 0 ? std::to_string(c.shared_ffn) : std::string("-"); }},
      {"model.moe.router_score", [](const ModelConfig& c) { return std::string(c.router_sigmoid ? "sigmoid" : "softmax"); }},
      {"model.moe.router_temperature", [](const ModelConfig& c) { return Num(c.router_temperature); }},
      {"model.moe.bias_update_rate", [](const ModelConfig& c) { return Num(c.bias_update_rate); }},
      {"model.moe.expert_dropout", [](const ModelConfig& c) { return Num(c.expert_dropout); }},
      {"train.optimizer", [](const ModelConfig& c) { return std::string(c.muon ? "muon" : "adamw"); }},
  };
  return Differences(a, b, options);
}

std::string ModelShapeDifference(const moe::v1::JobSpec& saved, int saved_vocab, const moe::v1::JobSpec& job,
                                 int job_vocab) {
  const ModelConfig a = ModelConfig::FromSpec(saved, saved_vocab), b = ModelConfig::FromSpec(job, job_vocab);
  auto num = [](int ModelConfig::*field) { return Text([field](const ModelConfig& c) { return std::to_string(c.*field); }); };
  const std::vector<std::pair<const char*, Text>> options = {
      {"model.vocab_size", num(&ModelConfig::vocab)},
      {"model.d_model", num(&ModelConfig::d)},
      {"model.n_layers", num(&ModelConfig::layers)},
      {"model.n_heads", num(&ModelConfig::heads)},
      {"model.n_kv_heads", num(&ModelConfig::kv_heads)},
      {"model.tie_embeddings", [](const ModelConfig& c) { return Bool(c.tied); }},
      {"model.moe.num_experts", num(&ModelConfig::experts)},
      {"model.moe.top_k", num(&ModelConfig::top_k)},
      {"model.moe.expert_hidden", num(&ModelConfig::ffn)},
  };
  return Differences(a, b, options);
}

}  // namespace moe
