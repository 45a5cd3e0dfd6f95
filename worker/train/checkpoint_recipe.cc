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

}  // namespace

std::string RecipeDifference(const moe::v1::JobSpec& saved, const moe::v1::JobSpec& job) {
  // The options with their defaults applied (ModelConfig's reading), so a spec that leaves a key
  // out agrees with one that names its default.
  const ModelConfig a = ModelConfig::FromSpec(saved, 0), b = ModelConfig::FromSpec(job, 0);
  using Text = std::function<std::string(const ModelConfig&)>;
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
  std::string out;
  for (const auto& [key, text] : options) {
    const std::string was = text(a), now = text(b);
    if (was == now) continue;
    absl::StrAppend(&out, out.empty() ? "" : "\n", key, ": ", was, " in the checkpoint, ", now, " in this job");
  }
  return out;
}

}  // namespace moe
