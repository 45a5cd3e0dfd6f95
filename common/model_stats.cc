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

}  // namespace

ModelStats ComputeModelStats(const moe::v1::JobSpec& spec) {
  const v1::ModelSpec& m = spec.model();
  const double V = m.vocab_size();
  const double D = m.d_model();
  const double L = m.n_layers();
  const double H = m.n_heads();
  const double Hkv = m.n_kv_heads() > 0 ? m.n_kv_heads() : m.n_heads();
  const double hd = m.n_heads() > 0 ? D / H : 0;
  const double T = m.seq_len();
  const double E = std::max(1, m.moe().num_experts());
  const double k = std::max(1, m.moe().top_k());
  const double F = m.moe().expert_hidden();
  const double W = std::max(1, spec.resources().ranks());
  const double accum = std::max(1, spec.train().grad_accum());

  // Per block (MODEL.md's table): two RMSNorm weights (D each), wqkv ((H + 2 Hkv) hd x D),
  // wo (D x D), the router (E x D; absent when E = 1, the dense case) and E SwiGLU experts
  // (w1, w3: D x F, w2: F x D).
  // Recipe options (MODEL.md "Counting"): QK-norm adds q_norm and k_norm (hd each), gated
  // attention wg (H hd x D), relu2 / gelu experts have no w3 (2 D F instead of 3 D F), and S
  // shared experts of hidden F_s are replicated and always active.
  const v1::MoeSpec& e = m.moe();
  const double matrices = e.activation() == v1::ACTIVATION_RELU2 || e.activation() == v1::ACTIVATION_GELU ? 2 : 3;
  const double norms = 2 * D + (m.attention().qk_norm() ? 2 * hd : 0);
  const double attention = D * (H + 2 * Hkv) * hd + D * D + (m.attention().gate() ? H * hd * D : 0);
  const double router = E > 1 ? D * E : 0;
  const double expert = matrices * D * F;
  const double shared = std::max(0, e.shared_experts()) * matrices * D *
                        (e.shared_expert_hidden() > 0 ? e.shared_expert_hidden() : F);
  // Outside the blocks: wte (V x D), final_norm (D), lm_head (V x D) when untied.
  const double outside = V * D + D + (m.tie_embeddings() ? 0 : V * D);

  const double replicated = L * (norms + attention + router + shared) + outside;
  const double total = replicated + L * E * expert;
  const double active = replicated + L * k * expert;

  ModelStats s;
  s.total_params = ToInt64(total);
  s.active_params = ToInt64(active);
  s.flops_per_token = 6 * active + 6 * L * D * T;

  // Expert parallelism splits each layer's experts over the ranks (E / W per rank); a dense
  // model (E = 1) keeps its one expert replicated like everything else.
  const double experts_per_rank = E > 1 ? E / W : 1;
  const double per_rank = replicated + L * experts_per_rank * expert;
  s.params_per_rank = ToInt64(per_rank);
  // fp32 master weights and gradients (4 bytes each) and AdamW's m and v (8 bytes).
  s.weight_bytes = ToInt64(4 * per_rank);
  s.grad_bytes = ToInt64(4 * per_rank);
  s.optimizer_bytes = ToInt64(8 * per_rank);

  // Activations kept for backward, for one micro-batch of n = (batch_size / W / grad_accum) * T
  // tokens, in elements per token:
  //   per block: 6 D (block input, attention norm output, attention output y before wo,
  //              residual after attention, MoE norm output, MoE output)
  //            + (H + 2 Hkv) hd (q, k, v) + H T (attention probabilities, one row per head)
  //            + 2 E (router logits and probabilities)
  //            + k (2 D + 3 F) (per assignment: the permuted input, the expert output, and the
  //              gate, up and silu(gate) * up activations)
  //   after the blocks: 2 D (final norm input and output) + 2 V (logits and their softmax).
  // Bytes = n * L * per_block + n * final, times 4 (fp32) or 2 (bf16).
  const double sequences = static_cast<double>(spec.train().batch_size()) / W / accum;
  const double tokens = sequences * T;
  const double per_block = 6 * D + (H + 2 * Hkv) * hd + H * T + 2 * E + k * (2 * D + 3 * F);
  const double final_elems = 2 * D + 2 * V;
  const double bytes_per_element = spec.train().precision() == v1::PRECISION_BF16 ? 2 : 4;
  const double activations = tokens * (L * per_block + final_elems) * bytes_per_element;
  s.activation_bytes = ToInt64(activations);
  s.total_bytes = ToInt64(16 * per_rank + activations);
  return s;
}

int64_t MaxRankBytes(const moe::v1::JobSpec& spec) {
  return spec.resources().device() == v1::DEVICE_CUDA ? kMaxCudaRankBytes : kMaxCpuRankBytes;
}

std::string FormatBytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  while (unit < 6 && bytes >= 1023.5) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.3g %s", bytes, kUnits[unit]);
}

}  // namespace moe
