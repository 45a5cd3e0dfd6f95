#include "common/model_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"

namespace moe {
namespace {

// Counts are summed in double (exact below 2^53, i.e. for any model that fits a machine) and
// saturate instead of overflowing for absurd specs.
int64_t ToInt64(double v) {
  if (!(v > 0)) return 0;
  if (v >= static_cast<double>(std::numeric_limits<int64_t>::max())) {
    return std::numeric_limits<int64_t>::max();
  }
  return static_cast<int64_t>(std::llround(v));
}



// MODEL.md's parameter counts of one spec, per layer and outside the blocks.
struct Counts {
  double norms = 0, attention = 0, attention_matrices = 0, router = 0, expert = 0, shared = 0, outside = 0;
  double L = 0, E = 1, k = 1, W = 1;
  double Replicated() const { return L * (norms + attention + router + shared) + outside; }
  double ExpertsPerRank() const { return E > 1 ? E / W : 1; }
};

Counts CountOf(const moe::v1::JobSpec& spec) {
  const v1::ModelSpec& m = spec.model();
  const double V = m.vocab_size();
  const double D = m.d_model();
  const double H = m.n_heads();
  const double Hkv = m.n_kv_heads() > 0 ? m.n_kv_heads() : m.n_heads();
  const double hd = m.n_heads() > 0 ? D / H : 0;
  const double F = m.moe().expert_hidden();
  Counts c;
  c.L = m.n_layers();
  c.E = std::max(1, m.moe().num_experts());
  c.k = std::max(1, m.moe().top_k());
  c.W = std::max(1, spec.resources().ranks());
  // Per block (MODEL.md's table): two RMSNorm weights (D each), wqkv ((H + 2 Hkv) hd x D),
  // wo (D x D), the router (E x D; absent when E = 1, the dense case) and E SwiGLU experts
  // (w1, w3: D x F, w2: F x D).
  // Recipe options (MODEL.md "Counting"): QK-norm adds q_norm and k_norm (hd each), gated
  // attention wg (H hd x D), relu2 / gelu experts have no w3 (2 D F instead of 3 D F), and S
  // shared experts of hidden F_s are replicated and always active.
  const v1::MoeSpec& e = m.moe();
  const double matrices = e.activation() == v1::ACTIVATION_RELU2 || e.activation() == v1::ACTIVATION_GELU ? 2 : 3;
  c.norms = 2 * D + (m.attention().qk_norm() ? 2 * hd : 0);
  c.attention = D * (H + 2 * Hkv) * hd + D * D + (m.attention().gate() ? H * hd * D : 0);
  c.router = c.E > 1 ? D * c.E : 0;
  c.expert = matrices * D * F;
  c.shared = std::max(0, e.shared_experts()) * matrices * D *
             (e.shared_expert_hidden() > 0 ? e.shared_expert_hidden() : F);
  // Outside the blocks: wte (V x D), final_norm (D), lm_head (V x D) when untied.
  c.outside = V * D + D + (m.tie_embeddings() ? 0 : V * D);
  return c;
}

}  // namespace

RankParams CountRankParams(const moe::v1::JobSpec& spec) {
  const Counts c = CountOf(spec);
  const v1::ModelSpec& m = spec.model();
  RankParams p;
  p.total = c.Replicated() + c.L * c.ExpertsPerRank() * c.expert;
  p.matrices = c.L * (c.attention + c.shared + c.ExpertsPerRank() * c.expert);
  // Per block: 2 norms (+ 2 QK-norms), wqkv, wo (+ wg), router, w1 w3 w2 (+ shared w1 w3 w2);
  // wte, final_norm (+ lm_head).
  p.tensors = c.L * (2 + (m.attention().qk_norm() ? 2 : 0) + 2 + (m.attention().gate() ? 1 : 0) + 1 + 3 +
                     (m.moe().shared_experts() > 0 ? 3 : 0)) +
              2 + (m.tie_embeddings() ? 0 : 1);
  return p;
}

ModelStats ComputeModelStats(const moe::v1::JobSpec& spec) {
  const Counts c = CountOf(spec);
  const v1::ModelSpec& m = spec.model();
  const double total = c.Replicated() + c.L * c.E * c.expert;
  const double active = c.Replicated() + c.L * c.k * c.expert;

  ModelStats s;
  s.total_params = ToInt64(total);
  s.active_params = ToInt64(active);
  s.flops_per_token = 6 * active + 6 * c.L * m.d_model() * static_cast<double>(m.seq_len());

  // Expert parallelism splits each layer's experts over the ranks (E / W per rank); a dense
  // model (E = 1) keeps its one expert replicated like everything else.
  const RankParams p = CountRankParams(spec);
  s.params_per_rank = ToInt64(p.total);
  const MemoryEstimate mem = EstimateMemory(spec, p);
  s.weight_bytes = mem.weights;
  s.grad_bytes = mem.grads;
  s.optimizer_bytes = mem.optimizer;
  s.activation_bytes = mem.activations;
  s.workspace_bytes = mem.workspace;
  s.runtime_bytes = mem.runtime;
  s.total_bytes = mem.total;
  return s;
}

int64_t MaxRankBytes(const moe::v1::JobSpec& spec) {
  return spec.resources().device() == v1::DEVICE_CUDA ? kMaxCudaRankBytes : kMaxCpuRankBytes;
}

std::string FormatBytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  // Three significant digits: a value that would print as 1000 or more (1e+03 in %.3g) moves
  // to the next unit (1000 MiB is 0.977 GiB); past the last unit, whole numbers.
  int unit = 0;
  while (unit < 6 && bytes >= 999.5) {
    bytes /= 1024;
    ++unit;
  }
  if (bytes >= 999.5) return absl::StrFormat("%.0f %s", bytes, kUnits[unit]);
  return absl::StrFormat("%.3g %s", bytes, kUnits[unit]);
}

}  // namespace moe
