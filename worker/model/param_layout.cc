#include "worker/model/param_layout.h"

#include <cmath>
#include <stdexcept>

#include "kernels/dropout.h"

namespace moe {
uint64_t ParamNameHash(const std::string& s) {  // FNV-1a
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

ParamLayout::ParamLayout(const ModelConfig& cfg, int rank, int world)
    : cfg_(cfg), rank_(rank), world_(world) {
  const int64_t V = cfg.vocab, D = cfg.d, E = cfg.experts, F = cfg.ffn;
  const float std = 0.02f;
  const float proj_std = 0.02f / std::sqrt(2.0f * cfg.layers);
  experts_local_ = cfg.is_moe() ? cfg.experts / world : 1;
  expert_begin_ = cfg.is_moe() ? rank * experts_local_ : 0;

  // Dense (replicated) parameters first, in state_dict order.
  Add("wte.weight", {V, D}, false, std, -1);
  for (int i = 0; i < cfg.layers; ++i) {
    std::string p = "blocks." + std::to_string(i) + ".";
    Add(p + "attn_norm.weight", {D}, false, 0, i);
    Add(p + "attn.wqkv.weight", {cfg.qkv_dim(), D}, false, std, i);
    if (cfg.qk_norm) {
      Add(p + "attn.q_norm.weight", {cfg.head_dim}, false, 0, i);
      Add(p + "attn.k_norm.weight", {cfg.head_dim}, false, 0, i);
    }
    if (cfg.attn_gate) Add(p + "attn.wg.weight", {static_cast<int64_t>(cfg.heads) * cfg.head_dim, D}, false, std, i);
    Add(p + "attn.wo.weight", {D, D}, false, proj_std, i);
    Add(p + "moe_norm.weight", {D}, false, 0, i);
    if (cfg.is_moe()) Add(p + "moe.router.weight", {E, D}, false, std, i);
    // A dense model (E = 1) keeps its single expert replicated.
    if (!cfg.is_moe()) {
      Add(p + "moe.w1", {1, D, F}, false, std, i);
      if (cfg.gated_experts()) Add(p + "moe.w3", {1, D, F}, false, std, i);
      Add(p + "moe.w2", {1, F, D}, false, proj_std, i);
    }
    if (cfg.shared_experts > 0) {
      const int64_t S = cfg.shared_experts, Fs = cfg.shared_ffn;
      Add(p + "moe.shared_w1", {S, D, Fs}, false, std, i);
      if (cfg.gated_experts()) Add(p + "moe.shared_w3", {S, D, Fs}, false, std, i);
      Add(p + "moe.shared_w2", {S, Fs, D}, false, proj_std, i);
    }
  }
  Add("final_norm.weight", {D}, false, 0, -1);
  if (!cfg.tied) Add("lm_head.weight", {V, D}, false, std, -1);
  dense_size_ = total_;
  if (cfg.is_moe()) {
    for (int i = 0; i < cfg.layers; ++i) {
      std::string p = "blocks." + std::to_string(i) + ".";
      Add(p + "moe.w1", {E, D, F}, true, std, i);
      if (cfg.gated_experts()) Add(p + "moe.w3", {E, D, F}, true, std, i);
      Add(p + "moe.w2", {E, F, D}, true, proj_std, i);
    }
  }
}

void ParamLayout::Add(const std::string& name, std::vector<int64_t> global_shape, bool expert,
                      float init_std, int block) {
  ParamInfo info;
  info.name = name;
  info.global_shape = global_shape;
  info.shape = global_shape;
  if (expert) info.shape[0] = experts_local_;
  info.size = 1;
  for (int64_t s : info.shape) info.size *= s;
  info.offset = total_;
  info.decay = global_shape.size() >= 2;
  info.expert = expert;
  info.init_std = init_std;
  info.block = block;
  const bool router = name.find(".router.") != std::string::npos;
  info.muon = block >= 0 && !router && global_shape.size() >= 2;
  total_ += info.size;
  params_.push_back(std::move(info));
}

const ParamInfo* ParamLayout::Find(const std::string& name) const {
  for (const ParamInfo& p : params_) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

ModelTensors ParamLayout::Bind(float* base) const {
  auto at = [&](const std::string& name) -> float* {
    const ParamInfo* p = Find(name);
    if (p == nullptr) throw std::logic_error("no parameter " + name);
    return base + p->offset;
  };
  auto maybe = [&](bool on, const std::string& name) -> float* { return on ? at(name) : nullptr; };
  ModelTensors t;
  t.wte = at("wte.weight");
  t.final_norm = at("final_norm.weight");
  t.lm_head = cfg_.tied ? t.wte : at("lm_head.weight");
  for (int i = 0; i < cfg_.layers; ++i) {
    std::string p = "blocks." + std::to_string(i) + ".";
    BlockTensors b;
    b.attn_norm = at(p + "attn_norm.weight");
    b.wqkv = at(p + "attn.wqkv.weight");
    b.wo = at(p + "attn.wo.weight");
    b.moe_norm = at(p + "moe_norm.weight");
    b.router = cfg_.is_moe() ? at(p + "moe.router.weight") : nullptr;
    b.w1 = at(p + "moe.w1");
    b.w3 = maybe(cfg_.gated_experts(), p + "moe.w3");
    b.w2 = at(p + "moe.w2");
    b.q_norm = maybe(cfg_.qk_norm, p + "attn.q_norm.weight");
    b.k_norm = maybe(cfg_.qk_norm, p + "attn.k_norm.weight");
    b.wg = maybe(cfg_.attn_gate, p + "attn.wg.weight");
    const bool shared = cfg_.shared_experts > 0;
    b.shared_w1 = maybe(shared, p + "moe.shared_w1");
    b.shared_w3 = maybe(shared && cfg_.gated_experts(), p + "moe.shared_w3");
    b.shared_w2 = maybe(shared, p + "moe.shared_w2");
    t.blocks.push_back(b);
  }
  return t;
}

void ParamLayout::Initialize(float* base, uint64_t seed) const {
  for (const ParamInfo& p : params_) {
    float* w = base + p.offset;
    if (p.init_std == 0) {
      for (int64_t i = 0; i < p.size; ++i) w[i] = 1.0f;
      continue;
    }
    // An expert shard starts at this global element of the full (E, ...) tensor.
    const int64_t first = GlobalFirst(p);
    const uint64_t key = seed ^ ParamNameHash(p.name);
    // Every element depends only on its counter, so the threads split the tensor without changing
    // a bit (a 9B-parameter model took minutes on one thread).
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < p.size; ++i) {
      // Box-Muller on two counter-based uniforms: element g uses counters 2g and 2g+1.
      const uint64_t g = static_cast<uint64_t>(first + i);
      double u1 = kernels::CounterUniform(key, 2 * g);
      double u2 = kernels::CounterUniform(key, 2 * g + 1);
      double r = std::sqrt(-2.0 * std::log(1.0 - u1));  // 1 - u1 in (0, 1]
      w[i] = static_cast<float>(p.init_std * r * std::cos(2.0 * M_PI * u2));
    }
  }
}

}  // namespace moe
