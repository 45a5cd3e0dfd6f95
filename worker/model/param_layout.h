// Where every parameter lives in one flat buffer (the same layout serves weights, gradients and
// AdamW moments): replicated ("dense") parameters first, then this rank's expert shard, so the
// dense gradients are one contiguous range to all-reduce.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "worker/model/model_config.h"

namespace moe {

struct ParamInfo {
  std::string name;                   // reference_moe.py state_dict name
  std::vector<int64_t> shape;         // on this rank (experts: E_local leading)
  std::vector<int64_t> global_shape;  // as in the checkpoint (experts: E leading)
  int64_t offset = 0;                 // floats from the start of the buffer
  int64_t size = 0;                   // floats on this rank
  bool decay = false;                 // weight decay: 2-D and 3-D weights only
  bool expert = false;                // sharded over ranks by the leading expert index
  int block = -1;                     // l for block l's tensors ("blocks.l."), else -1
  // A 2-D weight matrix inside a block (wqkv, wo, wg; each expert's and shared expert's W1,
  // W2, W3 one matrix at a time): what train.optimizer muon updates. Everything else is AdamW.
  bool muon = false;
  float init_std = 0;                 // N(0, std); 0 means ones (norm weights)
};

// train.master_weights bf16 keeps these tensors' gradients in bf16: the blocks' matrices, which
// hold nearly all the parameters. Stored bf16 on one GPU (each product accumulates in fp32 and
// its sum with the stored gradient is rounded as it is stored); elsewhere the step's summed
// gradient is rounded to the nearest bf16 values once (ReduceGrads). Norm gains, routers, the embedding and the head keep fp32
// gradients (the GPU sums the embedding's with fp32 atomics).
inline bool Bf16Gradient(const ParamInfo& p) { return p.muon; }

// Pointers into one flat buffer, by role. Shapes are the local ones.
struct BlockTensors {
  float* attn_norm;  // (D)
  float* wqkv;       // ((H + 2 H_kv) hd, D)
  float* wo;         // (D, D)
  float* moe_norm;   // (D)
  float* router;     // (E, D); null when dense
  float* w1;         // (E_local, D, F)
  float* w3;         // (E_local, D, F); null for relu2 / gelu (no W3)
  float* w2;         // (E_local, F, D)
  // Recipe options; null when the option is off.
  float* q_norm;     // (hd)            attention.qk_norm
  float* k_norm;     // (hd)
  float* wg;         // (H hd, D)       attention.gate
  float* shared_w1;  // (S, D, F_s)     moe.shared_experts
  float* shared_w3;  // (S, D, F_s)     swiglu only
  float* shared_w2;  // (S, F_s, D)
};
struct ModelTensors {
  float* wte;         // (V, D)
  float* lm_head;     // (V, D): wte when tied
  float* final_norm;  // (D)
  std::vector<BlockTensors> blocks;
};

// A stable 64-bit hash of a parameter's name (FNV-1a): keys the counter-based draws that
// belong to one tensor (initialisation, stochastic rounding), the same on every rank.
uint64_t ParamNameHash(const std::string& name);

class ParamLayout {
 public:
  ParamLayout(const ModelConfig& cfg, int rank, int world);

  const std::vector<ParamInfo>& params() const { return params_; }
  int64_t total() const { return total_; }
  int64_t dense_size() const { return dense_size_; }  // [0, dense_size) is replicated
  int expert_begin() const { return expert_begin_; }  // first global expert index on this rank
  int experts_local() const { return experts_local_; }
  const ParamInfo* Find(const std::string& name) const;
  // The global element index (in the checkpoint's full tensor) of p's first element on this
  // rank: 0, or the first local expert's offset in an expert tensor.
  int64_t GlobalFirst(const ParamInfo& p) const {
    return p.expert ? static_cast<int64_t>(expert_begin_) * (p.size / experts_local_) : 0;
  }

  ModelTensors Bind(float* base) const;

  // Fills weights per MODEL.md's init, from a counter-based RNG keyed by (seed, name, global
  // element index): the same model for any number of ranks.
  void Initialize(float* base, uint64_t seed) const;

 private:
  // block: the block l of a "blocks.l." tensor, -1 for the others.
  void Add(const std::string& name, std::vector<int64_t> global_shape, bool expert, float init_std, int block);

  ModelConfig cfg_;
  int rank_, world_;
  int expert_begin_ = 0, experts_local_ = 1;
  std::vector<ParamInfo> params_;
  int64_t total_ = 0;
  int64_t dense_size_ = 0;
};

}  // namespace moe
