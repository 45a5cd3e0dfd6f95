// The checks of the recipe options (MODEL.md "Options: the seeds' recipes"): each key's range,
// the combinations that make no sense, and the options the job's backend does not run
// (common/backend_limits.h). Defaults are applied before: 0 in a rate or a size means off.
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/backend_limits.h"
#include "common/job_spec_internal.h"

namespace moe::job_spec_internal {

using moe::v1::JobSpec;

void CheckRecipeOptions(const JobSpec& spec, const std::function<bool(const std::string&)>& ok,
                        const std::function<void(const std::string&, std::string)>& fail) {
  const v1::ModelSpec& m = spec.model();
  const v1::AttentionSpec& a = m.attention();
  const v1::MoeSpec& e = m.moe();
  const v1::TrainSpec& t = spec.train();
  // A probability that zeroes: at least 0 and below 1 (1 would switch everything off).
  auto probability = [&](const std::string& path, double p, const char* what) {
    if (!(p >= 0 && p < 1)) {
      fail(path, absl::StrCat("must be at least 0 and less than 1 (", what, "), got ", FormatDouble(p)));
    } else if (std::string why = RoundsToOneInFp32(p); !why.empty()) {
      fail(path, why);
    }
  };
  auto enum_value = [&](const std::string& path, int value, const google::protobuf::EnumDescriptor* d) {
    if (value != 0 && d->FindValueByNumber(value) == nullptr) {
      std::string names;
      for (const std::string& n : EnumNames(d)) names += (names.empty() ? "" : ", ") + n;
      fail(path, absl::StrCat("must be one of ", names, ", got ", EnumName(d, value)));
    }
  };

  probability("model.attention.dropout", a.dropout(), "the share of attention probabilities zeroed");
  enum_value("model.moe.activation", e.activation(), v1::Activation_descriptor());
  enum_value("model.moe.router_score", e.router_score(), v1::RouterScore_descriptor());
  enum_value("train.optimizer", t.optimizer(), v1::Optimizer_descriptor());
  enum_value("train.recompute", t.recompute(), v1::Recompute_descriptor());
  enum_value("train.optimizer_state", t.optimizer_state(), v1::StateStorage_descriptor());
  enum_value("train.master_weights", t.master_weights(), v1::Precision_descriptor());
  if (e.shared_experts() < 0 || e.shared_experts() > kMaxExperts) {
    fail("model.moe.shared_experts", absl::StrCat("must be between 0 and ", kMaxExperts, ", got ", e.shared_experts()));
  }
  if (e.shared_expert_hidden() < 0 || e.shared_expert_hidden() > kMaxExpertHidden) {
    fail("model.moe.shared_expert_hidden",
         absl::StrCat("must be between 1 and ", kMaxExpertHidden, ", got ", e.shared_expert_hidden()));
  } else if (e.shared_expert_hidden() > 0 && e.shared_experts() == 0 && ok("model.moe.shared_experts")) {
    fail("model.moe.shared_expert_hidden",
         "has no effect without shared experts; set model.moe.shared_experts (1 or more) or remove it");
  }
  // 0 stands for the default 1 (a spec that never set it).
  const double tau = e.router_temperature();
  if (!(tau == 0 || (tau >= kMinRouterTemperature && std::isfinite(tau)))) {
    fail("model.moe.router_temperature",
         absl::StrCat("must be at least ", FormatDouble(kMinRouterTemperature),
                      " (1 by default; below 1 sharpens the router, and the router divides the logits by it in fp32), got ",
                      FormatDouble(tau)));
  }
  const double u = e.bias_update_rate();
  if (!(u >= 0 && u <= 1)) {
    fail("model.moe.bias_update_rate",
         absl::StrCat("must be between 0 (off) and 1 (DeepSeek-V3 uses 0.001), got ", FormatDouble(u)));
  }
  probability("model.moe.expert_dropout", e.expert_dropout(), "the chance an expert is off for a micro-step");
  const double muon_lr = t.muon_lr();
  if (!(muon_lr >= 0 && std::isfinite(muon_lr))) {
    fail("train.muon_lr", absl::StrCat("must be greater than 0 (train.lr by default), got ", FormatDouble(muon_lr)));
  } else if (muon_lr > 0 && t.optimizer() != v1::OPTIMIZER_MUON && ok("train.optimizer")) {
    fail("train.muon_lr", "is only used with train.optimizer muon; set optimizer: muon or remove it");
  }

  // Router options need a router: a dense model (num_experts 1) has none.
  if (ok("model.moe.num_experts") && e.num_experts() == 1) {
    const char* why = " needs a router, and a dense model (model.moe.num_experts 1) has none; "
                      "set num_experts above 1 or remove it";
    if (e.router_score() == v1::SCORE_SIGMOID) fail("model.moe.router_score", absl::StrCat("sigmoid", why));
    if (tau > 0 && tau != 1) fail("model.moe.router_temperature", absl::StrCat("other than 1", why));
    if (u > 0) fail("model.moe.bias_update_rate", absl::StrCat("above 0", why));
    if (e.expert_dropout() > 0) fail("model.moe.expert_dropout", absl::StrCat("above 0", why));
  }
  // Both act on the choice of experts, and top_k = num_experts leaves none to make.
  for (const auto& [path, on] : {std::pair{"model.moe.expert_dropout", e.expert_dropout() > 0},
                                 std::pair{"model.moe.bias_update_rate", u > 0}}) {
    if (on && ok("model.moe.num_experts") && ok("model.moe.top_k") && ok(path) && e.num_experts() > 1 &&
        e.top_k() >= e.num_experts()) {
      fail(path, absl::StrCat("has no choice to change when top_k (", e.top_k(), ") picks every one of the ",
                              e.num_experts(), " experts; lower top_k or remove ", path + 10));
    }
  }

  // What the job's backend runs (common/backend_limits.h).
  if (!ok("resources.device")) return;
  const bool cuda = spec.resources().device() == v1::DEVICE_CUDA;
  const char* device = cuda ? "cuda" : "cpu";
  const std::vector<std::pair<const char*, std::pair<bool, RecipeOption>>> set = {
      {"model.attention.qk_norm", {a.qk_norm(), RecipeOption::kQkNorm}},
      {"model.attention.gate", {a.gate(), RecipeOption::kAttentionGate}},
      {"model.attention.dropout", {a.dropout() > 0, RecipeOption::kAttentionDropout}},
      {"model.moe.activation",
       {e.activation() == v1::ACTIVATION_RELU2 || e.activation() == v1::ACTIVATION_GELU, RecipeOption::kActivation}},
      {"model.moe.shared_experts", {e.shared_experts() > 0, RecipeOption::kSharedExperts}},
      {"model.moe.router_score", {e.router_score() == v1::SCORE_SIGMOID, RecipeOption::kSigmoidRouter}},
      {"model.moe.router_temperature", {tau > 0 && tau != 1, RecipeOption::kRouterTemperature}},
      {"model.moe.bias_update_rate", {u > 0, RecipeOption::kBiasBalancing}},
      {"model.moe.expert_dropout", {e.expert_dropout() > 0, RecipeOption::kExpertDropout}},
      {"train.optimizer", {t.optimizer() == v1::OPTIMIZER_MUON, RecipeOption::kMuon}},
      {"train.recompute", {t.recompute() == v1::RECOMPUTE_FULL, RecipeOption::kRecompute}},
      {"train.optimizer_state",
       {t.optimizer_state() == v1::STATE_BF16 || t.optimizer_state() == v1::STATE_INT8, RecipeOption::kCompactState}},
      {"train.master_weights", {t.master_weights() == v1::PRECISION_BF16, RecipeOption::kBf16MasterWeights}},
  };
  for (const auto& [path, on_option] : set) {
    if (on_option.first && ok(path) && !BackendRuns(cuda, on_option.second)) {
      fail(path, absl::StrCat("is not run by device ", device, " yet; remove it",
                              cuda && BackendRuns(false, on_option.second)
                                  ? " or use device: cpu"
                                  : ""));
    }
  }
}

}  // namespace moe::job_spec_internal
