// What each backend can run, in one place: the job-spec checks refuse anything else at
// validate and submit (with these lists), and the backends assert the same limits.
#pragma once

#include <string>

namespace moe {

// The CUDA attention kernels run any head size (d_model / n_heads) that is a multiple of 8 up to
// 256: the tensor-core tiles and the 16-byte row loads take 8 values at a time, and a 64-row
// tile of 256 values is what fits a block's shared memory (H100/H200: 227 KB) double-buffered.
inline constexpr int kCudaHeadSizeStep = 8;
inline constexpr int kCudaMaxHeadSize = 256;
// The CUDA router and the experts' row tables hold at most this many experts per layer, and the
// router this many picks per token.
inline constexpr int kCudaMaxExperts = 512;
inline constexpr int kCudaMaxTopK = 8;
// The experts' bf16 products read rows of F values 16 bytes at a time (the routed experts'
// expert_hidden and the shared experts' shared_expert_hidden alike).
inline constexpr int kCudaExpertHiddenStep = 8;

inline bool CudaRunsHeadSize(int hd) {
  return hd > 0 && hd % kCudaHeadSizeStep == 0 && hd <= kCudaMaxHeadSize;
}

// The bf16 attention runs on tensor cores (kernels/cuda/attention_tc.cu) from head size 16 up;
// its backward then reads q, k, v in bf16 only, so the CUDA model keeps no fp32 copy of them
// for the backward (cuda_model.cc, and common/memory_estimate.cc). Head size 8 takes the fp32
// SIMT kernels.
inline bool CudaAttentionOnTensorCores(int hd) { return CudaRunsHeadSize(hd) && hd >= 16; }

inline std::string CudaHeadSizesText() {
  return "multiples of " + std::to_string(kCudaHeadSizeStep) + " up to " + std::to_string(kCudaMaxHeadSize) +
         " (such as 64, 80, 96, 128, 192, 256)";
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
    case RecipeOption::kAttentionDropout: return true;
    case RecipeOption::kActivation: return true;
    case RecipeOption::kSharedExperts: return true;
    case RecipeOption::kSigmoidRouter: return true;
    case RecipeOption::kRouterTemperature: return true;
    case RecipeOption::kBiasBalancing: return true;
    case RecipeOption::kExpertDropout: return true;
    case RecipeOption::kMuon: return true;
    case RecipeOption::kRecompute: return true;
    case RecipeOption::kCompactState: return true;
    case RecipeOption::kBf16MasterWeights: return true;
  }
  return !cuda && false;
}

}  // namespace moe
