#include "worker/interchange/hf_layout.h"

#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/job_spec.h"
#include "common/number_text.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace moe {
namespace {

using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

std::string Block(int i) { return absl::StrCat("blocks.", i, "."); }
std::string Layer(int i) { return absl::StrCat("model.layers.", i, "."); }
std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// dst (cols, rows) = src (rows, cols)^T.
void Transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
}

NamedTensor Make(std::string name, std::vector<int64_t> shape) {
  NamedTensor t;
  t.name = std::move(name);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  t.shape = std::move(shape);
  t.data.resize(static_cast<size_t>(n));
  return t;
}

// The expert tensors of layer i in HF naming: (hf name, our name, expert, transposed shape).
struct ExpertPart {
  std::string hf, ours;
  int expert;
};
std::vector<ExpertPart> ExpertParts(const HfShape& s, int i) {
  std::vector<ExpertPart> out;
  if (s.is_moe() && s.qk_norm) {  // Qwen3-MoE: mlp.experts.e.{gate,down,up}_proj
    for (int e = 0; e < s.experts; ++e) {
      std::string p = absl::StrCat(Layer(i), "mlp.experts.", e, ".");
      out.push_back({p + "gate_proj.weight", Block(i) + "moe.w1", e});
      out.push_back({p + "down_proj.weight", Block(i) + "moe.w2", e});
      out.push_back({p + "up_proj.weight", Block(i) + "moe.w3", e});
    }
  } else if (s.is_moe()) {
    for (int e = 0; e < s.experts; ++e) {
      std::string p = absl::StrCat(Layer(i), "block_sparse_moe.experts.", e, ".");
      out.push_back({p + "w1.weight", Block(i) + "moe.w1", e});
      out.push_back({p + "w2.weight", Block(i) + "moe.w2", e});
      out.push_back({p + "w3.weight", Block(i) + "moe.w3", e});
    }
  } else {
    out.push_back({Layer(i) + "mlp.gate_proj.weight", Block(i) + "moe.w1", 0});
    out.push_back({Layer(i) + "mlp.up_proj.weight", Block(i) + "moe.w3", 0});
    out.push_back({Layer(i) + "mlp.down_proj.weight", Block(i) + "moe.w2", 0});
  }
  return out;
}

// The router's HF name: Mixtral's block_sparse_moe.gate, Qwen3-MoE's mlp.gate.
std::string RouterName(const HfShape& s, int i) {
  return Layer(i) + (s.qk_norm ? "mlp.gate.weight" : "block_sparse_moe.gate.weight");
}

}  // namespace

std::vector<std::string> HfUnrepresentable(const moe::v1::JobSpec& spec) {
  const auto& m = spec.model();
  const auto& e = m.moe();
  std::vector<std::string> out;
  if (m.attention().gate()) out.push_back("model.attention.gate (gated attention)");
  if (e.activation() == moe::v1::ACTIVATION_RELU2 || e.activation() == moe::v1::ACTIVATION_GELU) {
    out.push_back(absl::StrCat("model.moe.activation: ", e.activation() == moe::v1::ACTIVATION_RELU2 ? "relu2" : "gelu",
                               " (the architectures are SwiGLU)"));
  }
  if (e.shared_experts() > 0) out.push_back("model.moe.shared_experts (no gate on the shared expert)");
  if (e.router_score() == moe::v1::SCORE_SIGMOID) out.push_back("model.moe.router_score: sigmoid");
  if (e.router_temperature() > 0 && e.router_temperature() != 1) {
    out.push_back(absl::StrCat("model.moe.router_temperature: ", e.router_temperature()));
  }
  if (e.bias_update_rate() > 0) out.push_back("model.moe.bias_update_rate (router biases)");
  return out;
}

HfShape HfShape::FromSpec(const moe::v1::JobSpec& spec, int vocab) {
  const auto& m = spec.model();
  HfShape s;
  s.vocab = m.vocab_size() > 0 ? m.vocab_size() : vocab;
  s.d = m.d_model();
  s.layers = m.n_layers();
  s.heads = m.n_heads();
  s.kv_heads = m.n_kv_heads() > 0 ? m.n_kv_heads() : m.n_heads();
  s.head_dim = s.heads > 0 ? s.d / s.heads : 0;
  s.experts = m.moe().num_experts() > 0 ? m.moe().num_experts() : 1;
  s.top_k = s.experts > 1 ? m.moe().top_k() : 1;
  s.ffn = m.moe().expert_hidden() > 0 ? m.moe().expert_hidden() : 4 * s.d;
  s.tied = m.tie_embeddings();
  s.seq_len = m.seq_len();
  s.aux_coef = s.experts > 1 ? m.moe().aux_loss_coef() : 0;
  s.rope_theta = m.attention().rope_theta() > 0 ? m.attention().rope_theta() : 10000;
  s.norm_eps = NormEps(m);
  s.qk_norm = m.attention().qk_norm();
  s.unrepresentable = HfUnrepresentable(spec);
  s.ours = OurTensorShapes(s);
  return s;
}

Shapes OurTensorShapes(const HfShape& s) {
  const int64_t V = s.vocab, D = s.d, E = s.experts, F = s.ffn;
  const int64_t qkv = static_cast<int64_t>(s.heads + 2 * s.kv_heads) * s.head_dim;
  Shapes out;
  out.push_back({"wte.weight", {V, D}});
  for (int i = 0; i < s.layers; ++i) {
    out.push_back({Block(i) + "attn_norm.weight", {D}});
    out.push_back({Block(i) + "attn.wqkv.weight", {qkv, D}});
    if (s.qk_norm) {
      out.push_back({Block(i) + "attn.q_norm.weight", {s.head_dim}});
      out.push_back({Block(i) + "attn.k_norm.weight", {s.head_dim}});
    }
    out.push_back({Block(i) + "attn.wo.weight", {D, D}});
    out.push_back({Block(i) + "moe_norm.weight", {D}});
    if (s.is_moe()) out.push_back({Block(i) + "moe.router.weight", {E, D}});
    out.push_back({Block(i) + "moe.w1", {E, D, F}});
    out.push_back({Block(i) + "moe.w3", {E, D, F}});
    out.push_back({Block(i) + "moe.w2", {E, F, D}});
  }
  out.push_back({"final_norm.weight", {D}});
  if (!s.tied) out.push_back({"lm_head.weight", {V, D}});
  return out;
}

Shapes HfTensorShapes(const HfShape& s) {
  const int64_t V = s.vocab, D = s.d, E = s.experts, F = s.ffn;
  const int64_t q = static_cast<int64_t>(s.heads) * s.head_dim;
  const int64_t kv = static_cast<int64_t>(s.kv_heads) * s.head_dim;
  Shapes out;
  out.push_back({"model.embed_tokens.weight", {V, D}});
  for (int i = 0; i < s.layers; ++i) {
    const std::string p = Layer(i);
    out.push_back({p + "input_layernorm.weight", {D}});
    out.push_back({p + "self_attn.q_proj.weight", {q, D}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, D}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, D}});
    out.push_back({p + "self_attn.o_proj.weight", {D, q}});
    if (s.qk_norm) {
      out.push_back({p + "self_attn.q_norm.weight", {s.head_dim}});
      out.push_back({p + "self_attn.k_norm.weight", {s.head_dim}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {D}});
    if (s.is_moe()) out.push_back({RouterName(s, i), {E, D}});
    for (const ExpertPart& part : ExpertParts(s, i)) {
      const bool down = absl::EndsWith(part.ours, ".w2");
      out.push_back({part.hf, down ? std::vector<int64_t>{D, F} : std::vector<int64_t>{F, D}});
    }
  }
  out.push_back({"model.norm.weight", {D}});
  if (!s.tied) out.push_back({"lm_head.weight", {V, D}});
  return out;
}

absl::StatusOr<std::vector<NamedTensor>> ToHfTensors(const HfShape& s, std::vector<NamedTensor> ours) {
  std::map<std::string, NamedTensor> by_name;
  for (NamedTensor& t : ours) by_name[t.name] = std::move(t);
  ours.clear();
  std::vector<std::string> missing;
  for (const auto& [name, shape] : OurTensorShapes(s)) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      missing.push_back(absl::StrCat(name, ": missing from the checkpoint"));
    } else if (it->second.shape != shape) {
      missing.push_back(absl::StrCat(name, ": shape ", ShapeText(it->second.shape),
                                     " in the checkpoint, its spec says ", ShapeText(shape)));
    }
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(absl::StrJoin(missing, "\n"));
  }
  const int64_t D = s.d, F = s.ffn;
  const int64_t q_rows = static_cast<int64_t>(s.heads) * s.head_dim;
  const int64_t kv_rows = static_cast<int64_t>(s.kv_heads) * s.head_dim;
  std::vector<NamedTensor> out;
  auto rename = [&](const std::string& from, const std::string& to) {
    NamedTensor t = std::move(by_name[from]);
    t.name = to;
    out.push_back(std::move(t));
  };
  rename("wte.weight", "model.embed_tokens.weight");
  for (int i = 0; i < s.layers; ++i) {
    const std::string b = Block(i), p = Layer(i);
    rename(b + "attn_norm.weight", p + "input_layernorm.weight");
    // wqkv rows are q heads, then k heads, then v heads: three row ranges, no permutation (our
    // RoPE pairs element i with i + hd/2 within a head, as HF's rotate_half does).
    const NamedTensor& qkv = by_name[b + "attn.wqkv.weight"];
    const int64_t rows[3] = {q_rows, kv_rows, kv_rows};
    const char* names[3] = {"q_proj", "k_proj", "v_proj"};
    int64_t first = 0;
    for (int j = 0; j < 3; ++j) {
      NamedTensor t = Make(absl::StrCat(p, "self_attn.", names[j], ".weight"), {rows[j], D});
      std::copy(qkv.data.begin() + first * D, qkv.data.begin() + (first + rows[j]) * D, t.data.begin());
      first += rows[j];
      out.push_back(std::move(t));
    }
    by_name.erase(b + "attn.wqkv.weight");
    rename(b + "attn.wo.weight", p + "self_attn.o_proj.weight");
    if (s.qk_norm) {
      rename(b + "attn.q_norm.weight", p + "self_attn.q_norm.weight");
      rename(b + "attn.k_norm.weight", p + "self_attn.k_norm.weight");
    }
    rename(b + "moe_norm.weight", p + "post_attention_layernorm.weight");
    if (s.is_moe()) rename(b + "moe.router.weight", RouterName(s, i));
    // Ours are [in, out] per expert (z @ W1); HF's Linear weights are [out, in].
    for (const ExpertPart& part : ExpertParts(s, i)) {
      const bool down = absl::EndsWith(part.ours, ".w2");
      const int64_t in = down ? F : D, outd = down ? D : F;
      const NamedTensor& src = by_name[part.ours];
      NamedTensor t = Make(part.hf, {outd, in});
      Transpose(src.data.data() + static_cast<size_t>(part.expert) * in * outd, in, outd, t.data.data());
      out.push_back(std::move(t));
    }
    by_name.erase(b + "moe.w1");
    by_name.erase(b + "moe.w2");
    by_name.erase(b + "moe.w3");
  }
  rename("final_norm.weight", "model.norm.weight");
  if (!s.tied) rename("lm_head.weight", "lm_head.weight");
  return out;
}

absl::StatusOr<std::vector<NamedTensor>> FromHfTensors(const HfShape& s,
                                                       std::map<std::string, NamedTensor> hf) {
  std::vector<std::string> problems;
  for (auto it = hf.begin(); it != hf.end();) {
    // Buffers some older exports saved; recomputed from rope_theta, never a weight.
    if (absl::EndsWith(it->first, ".rotary_emb.inv_freq")) {
      it = hf.erase(it);
    } else {
      ++it;
    }
  }
  const Shapes expected = HfTensorShapes(s);
  std::map<std::string, bool> known;
  for (const auto& [name, shape] : expected) {
    known[name] = true;
    auto it = hf.find(name);
    if (it == hf.end()) {
      problems.push_back(absl::StrCat(name, ": missing; the job needs ", ShapeText(shape)));
    } else if (it->second.shape != shape) {
      problems.push_back(absl::StrCat(name, ": shape ", ShapeText(it->second.shape),
                                      " in the checkpoint, the job needs ", ShapeText(shape)));
    }
  }
  for (const auto& [name, t] : hf) {
    if (known.count(name)) continue;
    std::string why = "not a weight of the job's model";
    if (name == "lm_head.weight" && s.tied) why = "an untied LM head, but the job has model.tie_embeddings: true";
    problems.push_back(absl::StrCat(name, ": ", why, " (shape ", ShapeText(t.shape), ")"));
  }
  if (!problems.empty()) return absl::InvalidArgumentError(JoinProblems(problems));

  const int64_t D = s.d, F = s.ffn;
  std::vector<NamedTensor> out;
  auto rename = [&](const std::string& from, const std::string& to) {
    NamedTensor t = std::move(hf[from]);
    t.name = to;
    out.push_back(std::move(t));
  };
  rename("model.embed_tokens.weight", "wte.weight");
  for (int i = 0; i < s.layers; ++i) {
    const std::string b = Block(i), p = Layer(i);
    rename(p + "input_layernorm.weight", b + "attn_norm.weight");
    NamedTensor qkv = Make(b + "attn.wqkv.weight",
                           {static_cast<int64_t>(s.heads + 2 * s.kv_heads) * s.head_dim, D});
    size_t at = 0;
    for (const char* part : {"q_proj", "k_proj", "v_proj"}) {
      const NamedTensor& t = hf[absl::StrCat(p, "self_attn.", part, ".weight")];
      std::copy(t.data.begin(), t.data.end(), qkv.data.begin() + at);
      at += t.data.size();
    }
    out.push_back(std::move(qkv));
    if (s.qk_norm) {
      rename(p + "self_attn.q_norm.weight", b + "attn.q_norm.weight");
      rename(p + "self_attn.k_norm.weight", b + "attn.k_norm.weight");
    }
    rename(p + "self_attn.o_proj.weight", b + "attn.wo.weight");
    rename(p + "post_attention_layernorm.weight", b + "moe_norm.weight");
    if (s.is_moe()) rename(RouterName(s, i), b + "moe.router.weight");
    NamedTensor w1 = Make(b + "moe.w1", {s.experts, D, F});
    NamedTensor w3 = Make(b + "moe.w3", {s.experts, D, F});
    NamedTensor w2 = Make(b + "moe.w2", {s.experts, F, D});
    for (const ExpertPart& part : ExpertParts(s, i)) {
      const bool down = absl::EndsWith(part.ours, ".w2");
      NamedTensor& dst = down ? w2 : (absl::EndsWith(part.ours, ".w1") ? w1 : w3);
      const int64_t in = down ? F : D, outd = down ? D : F;
      Transpose(hf[part.hf].data.data(), outd, in, dst.data.data() + static_cast<size_t>(part.expert) * in * outd);
    }
    out.push_back(std::move(w1));
    out.push_back(std::move(w3));
    out.push_back(std::move(w2));
  }
  rename("model.norm.weight", "final_norm.weight");
  if (!s.tied) rename("lm_head.weight", "lm_head.weight");
  return out;
}

std::string HfConfigJson(const HfShape& s, const HfConfigExtras& x) {
  auto id = [](int v) { return v < 0 ? std::string("null") : std::to_string(v); };
  std::vector<std::string> kv;
  auto add = [&](const std::string& key, const std::string& value) {
    kv.push_back(absl::StrCat("  \"", key, "\": ", value));
  };
  const bool moe = s.is_moe();
  // QK-norm is Qwen3's attention: Qwen3MoeForCausalLM (Qwen3ForCausalLM when dense).
  if (s.qk_norm) {
    add("architectures", moe ? "[\"Qwen3MoeForCausalLM\"]" : "[\"Qwen3ForCausalLM\"]");
    add("model_type", moe ? "\"qwen3_moe\"" : "\"qwen3\"");
  } else {
    add("architectures", moe ? "[\"MixtralForCausalLM\"]" : "[\"MistralForCausalLM\"]");
    add("model_type", moe ? "\"mixtral\"" : "\"mistral\"");
  }
  add("vocab_size", std::to_string(s.vocab));
  add("hidden_size", std::to_string(s.d));
  add("intermediate_size", std::to_string(s.ffn));
  add("num_hidden_layers", std::to_string(s.layers));
  add("num_attention_heads", std::to_string(s.heads));
  add("num_key_value_heads", std::to_string(s.kv_heads));
  add("head_dim", std::to_string(s.head_dim));
  add("hidden_act", "\"silu\"");
  add("max_position_embeddings", std::to_string(s.seq_len));
  add("initializer_range", "0.02");
  add("rms_norm_eps", Shortest(s.norm_eps));
  add("rope_theta", absl::StrFormat("%.1f", x.rope_theta));
  add("rope_scaling", "null");
  add("sliding_window", "null");
  add("attention_dropout", "0.0");
  add("tie_word_embeddings", s.tied ? "true" : "false");
  add("use_cache", "true");
  add("bos_token_id", id(x.bos_token_id));
  add("eos_token_id", id(x.eos_token_id));
  add("pad_token_id", "null");
  if (s.qk_norm) {
    add("attention_bias", "false");
    add("use_sliding_window", "false");
    add("max_window_layers", std::to_string(s.layers));
  }
  if (moe && s.qk_norm) {
    add("num_experts", std::to_string(s.experts));
    add("num_experts_per_tok", std::to_string(s.top_k));
    add("moe_intermediate_size", std::to_string(s.ffn));
    add("norm_topk_prob", "true");  // our top-k weights are renormalised
    add("decoder_sparse_step", "1");
    add("mlp_only_layers", "[]");
    add("output_router_logits", "false");
    add("router_aux_loss_coef", absl::StrFormat("%.17g", s.aux_coef));
  } else if (moe) {
    add("num_local_experts", std::to_string(s.experts));
    add("num_experts_per_tok", std::to_string(s.top_k));
    add("output_router_logits", "false");
    add("router_aux_loss_coef", absl::StrFormat("%.17g", s.aux_coef));
    add("router_jitter_noise", "0.0");
  }
  add("torch_dtype", absl::StrCat("\"", x.torch_dtype, "\""));
  return absl::StrCat("{\n", absl::StrJoin(kv, ",\n"), "\n}\n");
}

std::string JoinProblems(const std::vector<std::string>& problems) {
  constexpr size_t kShown = 64;
  if (problems.size() <= kShown) return absl::StrJoin(problems, "\n");
  const std::vector<std::string> shown(problems.begin(), problems.begin() + kShown);
  return absl::StrCat(absl::StrJoin(shown, "\n"), "\n... and ", problems.size() - kShown, " more (", problems.size(),
                      " in all)");
}

absl::Status CheckHfConfig(const std::string& json, const std::string& what, const HfShape& s,
                           double rope_theta, std::vector<std::string>* notes) {
  google::protobuf::Struct doc;
  if (absl::Status st = ParseJsonObject(json, &doc); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", st.message()));
  }
  const auto& f = doc.fields();
  auto str = [&](const std::string& key) -> std::string {
    auto it = f.find(key);
    return it != f.end() && it->second.has_string_value() ? it->second.string_value() : "";
  };
  auto num = [&](const std::string& key, double* out) -> bool {
    auto it = f.find(key);
    if (it == f.end() || it->second.kind_case() != google::protobuf::Value::kNumberValue) return false;
    *out = it->second.number_value();
    return true;
  };
  auto truthy = [&](const std::string& key) {
    auto it = f.find(key);
    return it != f.end() && it->second.kind_case() == google::protobuf::Value::kBoolValue &&
           it->second.bool_value();
  };
  auto is_null = [&](const std::string& key) {
    auto it = f.find(key);
    return it == f.end() || it->second.kind_case() == google::protobuf::Value::kNullValue;
  };
  std::vector<std::string> problems;
  auto as_json = [](const google::protobuf::Value& v) {
    std::string shown;
    (void)google::protobuf::util::MessageToJsonString(v, &shown);
    return shown;
  };
  // A key given with the wrong kind of value ("hidden_size": "32", "rms_norm_eps": "x",
  // "tie_word_embeddings": "yes") is named as such, not taken as absent or as its default.
  auto wrong_kind = [&](const char* key, google::protobuf::Value::KindCase want, const char* what) {
    auto it = f.find(key);
    if (it == f.end() || it->second.kind_case() == google::protobuf::Value::kNullValue ||
        it->second.kind_case() == want) {
      return;
    }
    problems.push_back(absl::StrCat(key, " is ", as_json(it->second), " in config.json, not ", what));
  };
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "intermediate_size", "moe_intermediate_size",
                          "num_local_experts", "num_experts", "num_experts_per_tok", "rope_theta", "rms_norm_eps",
                          "sliding_window", "decoder_sparse_step"}) {
    wrong_kind(key, google::protobuf::Value::kNumberValue, "a number");
  }
  for (const char* key : {"tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "norm_topk_prob"}) {
    wrong_kind(key, google::protobuf::Value::kBoolValue, "true or false");
  }
  for (const char* key : {"model_type", "hidden_act"}) {
    wrong_kind(key, google::protobuf::Value::kStringValue, "a string");
  }
  wrong_kind("rope_parameters", google::protobuf::Value::kStructValue, "an object");
  const std::string type = str("model_type");
  const bool qwen = type == "qwen3" || type == "qwen3_moe";
  const bool dense_type = type == "mistral" || type == "llama" || type == "qwen3";
  const bool moe_type = type == "mixtral" || type == "qwen3_moe";
  if (!moe_type && !dense_type) {
    problems.push_back(absl::StrCat("model_type is ", JsonQuote(type),
                                    "; only mixtral and qwen3_moe (and mistral, llama or qwen3 for a dense model) "
                                    "can be read"));
  } else if (qwen != s.qk_norm) {
    problems.push_back(qwen ? absl::StrCat("model_type ", type, " has QK-norm, but the job has model.attention.qk_norm "
                                           "false (set it to true)")
                            : absl::StrCat("model_type ", type, " has no QK-norm, but the job has "
                                           "model.attention.qk_norm true (remove it, or start from a Qwen3 checkpoint)"));
  } else if (dense_type && s.is_moe()) {
    problems.push_back(absl::StrCat("model_type ", type, " is a dense model, but the job has model.moe.num_experts ",
                                    s.experts, " (set it to 1, or start from a Mixtral checkpoint)"));
  }
  struct Dim {
    const char* key;
    int ours;
    const char* job_key;
    bool required;
  };
  std::vector<Dim> dims = {
      {"vocab_size", s.vocab, "model.vocab_size", true},
      {"hidden_size", s.d, "model.d_model", true},
      {"num_hidden_layers", s.layers, "model.n_layers", true},
      {"num_attention_heads", s.heads, "model.n_heads", true},
      {"num_key_value_heads", s.kv_heads, "model.n_kv_heads", false},
      {"head_dim", s.head_dim, "model.d_model / model.n_heads", false},
      {type == "qwen3_moe" ? "moe_intermediate_size" : "intermediate_size", s.ffn, "model.moe.expert_hidden", true},
  };
  // A dense model_type has no experts key that transformers reads: one its config.json carries anyway
  // is not compared (a dense type on an MoE job is told above). The job's count is the value to state.
  if (!dense_type) {
    dims.push_back({type == "qwen3_moe" ? "num_experts" : "num_local_experts", s.experts, "model.moe.num_experts",
                    moe_type});
  }
  for (const Dim& d : dims) {
    double v = 0;
    if (!num(d.key, &v)) {
      if (d.required && is_null(d.key)) problems.push_back(absl::StrCat(d.key, " is missing from config.json"));
      continue;
    }
    if (v != d.ours) {
      problems.push_back(absl::StrCat(d.key, " is ", v, " in config.json, the job's ", d.job_key, " is ", d.ours));
    }
  }
  double k = 0;
  if (type == "qwen3_moe") {
    auto norm = f.find("norm_topk_prob");
    if (norm == f.end() || norm->second.kind_case() != google::protobuf::Value::kBoolValue || !norm->second.bool_value()) {
      problems.push_back("norm_topk_prob is not true in config.json; our router renormalises the top-k weights");
    }
    double step = 1;
    if (num("decoder_sparse_step", &step) && step != 1) {
      problems.push_back(absl::StrCat("decoder_sparse_step is ", step, "; every one of our blocks is an MoE layer"));
    }
    auto dense_layers = f.find("mlp_only_layers");
    if (dense_layers != f.end() && dense_layers->second.has_list_value() &&
        dense_layers->second.list_value().values_size() > 0) {
      problems.push_back("mlp_only_layers is not empty; every one of our blocks is an MoE layer");
    }
  }
  if (moe_type && num("num_experts_per_tok", &k)) {
    if (k < 1 || k != std::floor(k) || k > s.experts) {
      problems.push_back(absl::StrCat("num_experts_per_tok is ", k, " in config.json, not a whole number from 1 ",
                                      "to its ", s.experts, " experts: the config is inconsistent"));
    } else if (k != s.top_k) {
      notes->push_back(absl::StrCat("the checkpoint routed to num_experts_per_tok = ", k,
                                    " experts per token; this job uses model.moe.top_k = ", s.top_k));
    }
  }
  // An absent (or null) key means transformers' default for the type: 1e6 for Mixtral, 10000 for
  // the others (before, 10000 for all: a Mixtral config without the key passed a job at 10000).
  // (A value of another kind was named above; no default stands in for it here.)
  double theta = type == "mixtral" ? 1e6 : 10000;
  bool theta_known = is_null("rope_theta") || num("rope_theta", &theta);
  // transformers 5 writes RoPE's settings as one object, rope_parameters {rope_type, rope_theta, ...}
  // (before, a config of it without the top-level key read as the type's default theta).
  auto rope = f.find("rope_parameters");
  if (rope != f.end() && rope->second.has_struct_value()) {
    const auto& rf = rope->second.struct_value().fields();
    auto t = rf.find("rope_theta");
    if (t != rf.end() && t->second.kind_case() != google::protobuf::Value::kNullValue) {
      theta_known = t->second.has_number_value();
      if (theta_known) theta = t->second.number_value();
      if (!theta_known) problems.push_back("rope_parameters.rope_theta in config.json is not a number");
    }
    auto rope_type = rf.find("rope_type");
    if (rope_type != rf.end() && rope_type->second.kind_case() != google::protobuf::Value::kNullValue &&
        !(rope_type->second.has_string_value() && rope_type->second.string_value() == "default")) {
      problems.push_back(absl::StrCat("rope_parameters.rope_type is ", as_json(rope_type->second),
                                      " in config.json; our RoPE is the default one, with no scaling"));
    }
  }
  if (theta_known && std::fabs(theta - rope_theta) > 1e-6 * rope_theta) {
    problems.push_back(absl::StrCat("rope_theta is ", theta, " in config.json; this job's RoPE uses ", rope_theta,
                                    " (set model.attention.rope_theta: ", theta, " to match)"));
  }
  // As rope_theta, an absent (or null) key is transformers' default: 1e-5 for Mixtral, 1e-6 for the others.
  double eps = type == "mixtral" ? 1e-5 : 1e-6;
  const bool eps_absent = is_null("rms_norm_eps");
  if ((eps_absent || num("rms_norm_eps", &eps)) && (moe_type || dense_type) &&
      std::fabs(eps - s.norm_eps) > 1e-6 * s.norm_eps) {
    problems.push_back(absl::StrCat("rms_norm_eps is ", eps,
                                    eps_absent ? absl::StrCat(" (absent from config.json: transformers' default for ",
                                                              type, ")")
                                               : std::string(" in config.json"),
                                    "; this job's RMSNorm uses ", s.norm_eps, " (set model.norm_eps: ", eps,
                                    " to match)"));
  }
  const std::string act = str("hidden_act");
  if (!act.empty() && act != "silu") {
    problems.push_back(absl::StrCat("hidden_act is ", JsonQuote(act), "; our experts are SwiGLU (silu)"));
  }
  if (truthy("attention_bias") || truthy("mlp_bias")) {
    problems.push_back("attention_bias or mlp_bias is true; our model has no biases");
  }
  if (!is_null("rope_scaling")) problems.push_back("rope_scaling is set; our RoPE has no scaling");
  // Qwen3 applies sliding_window only with use_sliding_window true; the others whenever it is set.
  double window = 0;
  if (qwen && truthy("use_sliding_window")) {
    problems.push_back("use_sliding_window is true; our attention is full causal");
  } else if (!qwen && num("sliding_window", &window) && window < s.seq_len) {
    problems.push_back(absl::StrCat("sliding_window is ", window, ", shorter than the job's model.seq_len ",
                                    s.seq_len, "; our attention is full causal"));
  }
  auto tie = f.find("tie_word_embeddings");
  // HF's default for these configs is false.
  const bool hf_tied = tie != f.end() && tie->second.kind_case() == google::protobuf::Value::kBoolValue &&
                       tie->second.bool_value();
  if (hf_tied != s.tied &&
      (is_null("tie_word_embeddings") || tie->second.kind_case() == google::protobuf::Value::kBoolValue)) {
    problems.push_back(absl::StrCat("tie_word_embeddings is ", hf_tied ? "true" : "false",
                                    " in config.json, the job's model.tie_embeddings is ", s.tied ? "true" : "false"));
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " does not describe this job's model:\n",
                                                   JoinProblems(problems)));
  }
  return absl::OkStatus();
}

}  // namespace moe
