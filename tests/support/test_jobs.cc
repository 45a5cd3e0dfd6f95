#include "tests/support/test_jobs.h"

#include <fstream>

#include "tests/support/paths.h"

namespace moe::testing {

moe::v1::JobSpec SmallShakespeareSpec(int ranks) {
  moe::v1::JobSpec s;
  s.set_name("test-small");
  auto* m = s.mutable_model();
  m->set_d_model(64);
  m->set_n_layers(2);
  m->set_n_heads(4);
  m->set_n_kv_heads(2);
  m->set_seq_len(32);
  m->set_tie_embeddings(true);
  m->set_dropout(0.0);
  auto* e = m->mutable_moe();
  e->set_num_experts(4);
  e->set_top_k(2);
  e->set_expert_hidden(96);
  e->set_capacity_factor(0);
  e->set_aux_loss_coef(0.01);
  e->set_z_loss_coef(0.001);
  auto* d = s.mutable_data();
  d->set_path(ShakespearePath());
  d->set_tokenizer(moe::v1::TOKENIZER_CHAR);
  d->set_val_fraction(0.1);
  d->set_cache_dir(MakeTempDir("moe-cache-"));
  auto* t = s.mutable_train();
  t->set_steps(200);
  t->set_batch_size(16);
  t->set_grad_accum(1);
  t->set_lr(3e-3);
  t->set_min_lr(3e-4);
  t->set_warmup_steps(20);
  t->set_weight_decay(0.1);
  t->set_grad_clip(1.0);
  t->set_seed(1337);
  t->set_precision(moe::v1::PRECISION_FP32);
  t->set_eval_every(100);
  t->set_eval_batches(4);
  t->set_log_every(50);
  auto* r = s.mutable_resources();
  r->set_ranks(ranks);
  r->set_device(moe::v1::DEVICE_CPU);
  r->set_launcher(moe::v1::LAUNCHER_LOCAL);
  r->set_threads_per_rank(1);
  auto* c = s.mutable_checkpoint();
  c->set_every(0);
  c->set_keep(2);
  return s;
}

ModelConfig CaseConfig(const ModelCase& c, int vocab, int d, int seq_len, int ffn) {
  ModelConfig cfg;
  cfg.vocab = vocab;
  cfg.d = d;
  cfg.layers = 2;
  cfg.heads = c.heads;
  cfg.kv_heads = c.kv_heads;
  cfg.head_dim = d / c.heads;
  cfg.seq_len = seq_len;
  cfg.experts = c.experts;
  cfg.top_k = c.top_k;
  cfg.ffn = ffn;
  cfg.tied = c.tied;
  cfg.dropout = c.dropout;
  cfg.capacity_factor = c.capacity;
  cfg.aux_coef = c.experts > 1 ? 0.01 : 0;
  cfg.z_coef = c.experts > 1 ? 0.001 : 0;
  return cfg;
}

std::string WriteTempText(const std::string& text) {
  std::string path = MakeTempDir("moe-text-") + "/input.txt";
  std::ofstream(path) << text;
  return path;
}

}  // namespace moe::testing
