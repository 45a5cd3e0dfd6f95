// What each backend can run, in one place: the job-spec checks refuse anything else at
// validate and submit (with these lists), and the backends assert the same limits.
#pragma once

#include <array>
#include <string>

namespace moe {

// The CUDA attention kernels are instantiated for these head sizes (d_model / n_heads).
inline constexpr std::array<int, 4> kCudaHeadSizes = {8, 16, 32, 64};
// The CUDA router and the experts' row tables hold at most this many experts per layer.
inline constexpr int kCudaMaxExperts = 64;

inline bool CudaRunsHeadSize(int hd) {
  for (int s : kCudaHeadSizes) {
    if (s == hd) return true;
  }
  return false;
}

inline std::string CudaHeadSizesText() {
  std::string out;
  for (int s : kCudaHeadSizes) out += (out.empty() ? "" : ", ") + std::to_string(s);
  return out;
}

// The recipe options of MODEL.md ("Options: the seeds' recipes") by what a job sets; a backend
// runs an option only when BackendRuns says so, and the job-spec checks refuse the rest.
enum class RecipeOption {
  kQkNorm,             // model.attention.qk_norm
  kAttentionGate,      // model.attention.gate
  kAttentionDropout,   // model.attention.dropout
  kActivation,         // model.moe.activation relu2 / gelu
  kSharedExperts,      // model.moe.shared_experts
  kSigmoidRouter,      // model.moe.router_score sigmoid
  kRouterTemperature,  // model.moe.router_temperature other than 1
  kBiasBalancing,      // model.moe.bias_update_rate
  kExpertDropout,      // model.moe.expert_dropout
  kMuon,               // train.optimizer muon
  kRecompute,          // train.recompute full
  kCompactState,       // train.optimizer_state bf16 / int8
  kBf16MasterWeights,  // train.master_weights bf16
};

inline bool BackendRuns(bool cuda, RecipeOption option) {
  switch (option) {
    case RecipeOption::kQkNorm: return true;
    case RecipeOption::kAttentionGate: return true;
    case RecipeOption::kAttentionDropout: return !cuda;
    case RecipeOption::kActivation: return false;
    case RecipeOption::kSharedExperts: return false;
    case RecipeOption::kSigmoidRouter: return false;
    case RecipeOption::kRouterTemperature: return false;
    case RecipeOption::kBiasBalancing: return false;
    case RecipeOption::kExpertDropout: return false;
    case RecipeOption::kMuon: return false;
    case RecipeOption::kRecompute: return false;
    case RecipeOption::kCompactState: return !cuda;
    case RecipeOption::kBf16MasterWeights: return !cuda;
  }
  return !cuda && false;
}

}  // namespace moe
