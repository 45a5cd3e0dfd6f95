// What a job file may leave out: the default of every optional key (some derived from other
// keys), and relative paths made absolute against the job file's directory.
#include <algorithm>
#include <limits>
#include <filesystem>
#include <set>
#include <string>
#include <system_error>

#include "common/job_spec_internal.h"

namespace moe::job_spec_internal {

namespace fs = std::filesystem;
using moe::v1::JobSpec;

// A default derived from another key (n_kv_heads from n_heads, ...) is only computed from a
// usable value; otherwise the derived key is marked unusable too, so that one mistake gives
// one error.
void ApplyDefaults(JobSpec* s, const std::set<std::string>& present, std::set<std::string>* bad) {
  auto absent = [&](const char* path) { return present.count(path) == 0; };
  auto usable = [&](const char* path) { return !IsUnderAny(path, *bad); };
  // For an absent key: set() when what it derives from is usable, else mark the key unusable.
  auto derive = [&](const char* path, bool from_usable, auto set) {
    if (!absent(path)) return;
    if (from_usable) {
      set();
    } else {
      bad->insert(path);
    }
  };
  v1::ModelSpec* m = s->mutable_model();
  v1::MoeSpec* moe = m->mutable_moe();
  v1::DataSpec* data = s->mutable_data();
  v1::TrainSpec* train = s->mutable_train();
  v1::ResourceSpec* res = s->mutable_resources();
  v1::CheckpointSpec* ckpt = s->mutable_checkpoint();

  // (From values the range checks accept, as every derivation below: one past its range is that
  // error alone, not also the derived key's.)
  derive("model.n_kv_heads", usable("model.n_heads") && m->n_heads() >= 1 && m->n_heads() <= kMaxDModel,
         [&] { m->set_n_kv_heads(m->n_heads()); });
  if (absent("model.tie_embeddings")) m->set_tie_embeddings(true);
  if (absent("model.moe.num_experts")) moe->set_num_experts(1);
  if (absent("model.moe.top_k")) moe->set_top_k(1);
  derive("model.moe.expert_hidden",
         usable("model.d_model") && m->d_model() >= 1 && m->d_model() <= kMaxDModel,
         [&] { moe->set_expert_hidden(4 * m->d_model()); });
  if (absent("model.moe.aux_loss_coef")) moe->set_aux_loss_coef(0.01);
  if (absent("model.moe.z_loss_coef")) moe->set_z_loss_coef(0.001);

  if (absent("data.tokenizer")) data->set_tokenizer(v1::TOKENIZER_CHAR);
  if (absent("data.val_fraction")) data->set_val_fraction(0.1);
  if (usable("data.tokenizer") && data->tokenizer() == v1::TOKENIZER_GPT2) {
    if (absent("model.vocab_size")) m->set_vocab_size(kGpt2PaddedVocab);
    derive("data.tokenizer_dir", usable("data.path") && !data->path().empty(),
           [&] { data->set_tokenizer_dir(fs::path(data->path()).parent_path().string()); });
  }

  if (absent("train.grad_accum")) train->set_grad_accum(1);
  if (absent("train.lr")) train->set_lr(1e-3);
  derive("train.min_lr",
         usable("train.lr") && train->lr() >= std::numeric_limits<float>::min() &&
             train->lr() <= std::numeric_limits<float>::max(),
         [&] { train->set_min_lr(train->lr() / 10); });
  derive("train.warmup_steps", usable("train.steps") && train->steps() >= 1,
         [&] { train->set_warmup_steps(std::min(100, train->steps())); });
  if (absent("train.weight_decay")) train->set_weight_decay(0.1);
  if (absent("train.beta1")) train->set_beta1(0.9);
  if (absent("train.beta2")) train->set_beta2(0.95);
  if (absent("train.grad_clip")) train->set_grad_clip(1.0);
  if (absent("train.seed")) train->set_seed(1337);
  if (absent("train.eval_every")) train->set_eval_every(250);
  if (absent("train.eval_batches")) train->set_eval_batches(20);
  if (absent("train.log_every")) train->set_log_every(10);
  if (absent("train.schedule")) train->set_schedule(v1::SCHEDULE_COSINE);
  if (absent("train.decay_fraction")) train->set_decay_fraction(0.2);
  if (absent("model.attention.rope_theta")) m->mutable_attention()->set_rope_theta(10000);
  // The recipe options: off unless named (MODEL.md "Options").
  if (absent("model.moe.activation")) moe->set_activation(v1::ACTIVATION_SWIGLU);
  if (absent("model.moe.router_score")) moe->set_router_score(v1::SCORE_SOFTMAX);
  if (absent("model.moe.router_temperature")) moe->set_router_temperature(1.0);
  // Shared experts default to the routed experts' hidden size, Muon to AdamW's lr.
  if (absent("model.moe.shared_expert_hidden") && moe->shared_experts() > 0) {
    derive("model.moe.shared_expert_hidden", usable("model.moe.expert_hidden"),
           [&] { moe->set_shared_expert_hidden(moe->expert_hidden()); });
  }
  if (absent("train.optimizer")) train->set_optimizer(v1::OPTIMIZER_ADAMW);
  if (absent("train.recompute")) train->set_recompute(v1::RECOMPUTE_NONE);
  if (absent("train.optimizer_state")) train->set_optimizer_state(v1::STATE_FP32);
  if (absent("train.master_weights")) train->set_master_weights(v1::PRECISION_FP32);
  if (absent("train.muon_lr") && train->optimizer() == v1::OPTIMIZER_MUON) {
    derive("train.muon_lr", usable("train.lr"), [&] { train->set_muon_lr(train->lr()); });
  }

  if (absent("resources.ranks")) res->set_ranks(1);
  if (absent("resources.device")) res->set_device(v1::DEVICE_CPU);
  // Mixed precision is what a GPU job wants; the CPU kernels are fp32.
  if (absent("train.precision")) {
    const bool cuda = usable("resources.device") && res->device() == v1::DEVICE_CUDA;
    train->set_precision(cuda ? v1::PRECISION_BF16 : v1::PRECISION_FP32);
  }
  if (absent("resources.launcher")) res->set_launcher(v1::LAUNCHER_LOCAL);
  if (usable("resources.launcher") && res->launcher() == v1::LAUNCHER_SLURM) {
    v1::SlurmSpec* slurm = res->mutable_slurm();
    if (absent("resources.slurm.nodes")) slurm->set_nodes(1);
    derive(
        "resources.slurm.ranks_per_node",
        usable("resources.ranks") && usable("resources.slurm.nodes") && res->ranks() >= 1 &&
            slurm->nodes() >= 1,
        [&] { slurm->set_ranks_per_node((res->ranks() + slurm->nodes() - 1) / slurm->nodes()); });
    if (absent("resources.slurm.gpus_per_node") && usable("resources.device")) {
      slurm->set_gpus_per_node(res->device() == v1::DEVICE_CUDA ? slurm->ranks_per_node() : 0);
    }
  }

  if (absent("checkpoint.every")) ckpt->set_every(1000);
  if (absent("checkpoint.keep")) ckpt->set_keep(3);
}

// Stored absolute because the daemon that runs the job may have another working directory.
void ResolvePaths(JobSpec* s, const std::string& base_dir) {
  std::error_code ec;
  fs::path base = fs::absolute(base_dir.empty() ? fs::path(".") : fs::path(base_dir), ec);
  if (ec) base = fs::path(base_dir);
  auto resolve = [&](std::string* p) {
    if (p->empty() || (*p)[0] == '~' || fs::path(*p).is_absolute()) return;
    fs::path resolved = (base / *p).lexically_normal();
    if (!resolved.has_filename() && resolved.has_parent_path()) resolved = resolved.parent_path();
    *p = resolved.string();
  };
  resolve(s->mutable_data()->mutable_path());
  resolve(s->mutable_data()->mutable_tokenizer_dir());
  resolve(s->mutable_data()->mutable_cache_dir());
  resolve(s->mutable_checkpoint()->mutable_dir());
  resolve(s->mutable_model()->mutable_init_from());
}

}  // namespace moe::job_spec_internal
