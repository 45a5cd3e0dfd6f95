// moectl validate JOB.yaml: checks a job file on the user's terminal and describes the job
// (shape, parameters, FLOPs, memory per rank), so a bad file never reaches the daemon.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/commands.h"
#include "common/job_spec.h"
#include "common/memory_fit.h"
#include "common/model_stats.h"
#include "common/number_text.h"

namespace moe::client {
namespace {

constexpr char kUsage[] =
    "usage: moectl validate JOB.yaml [--gpu-memory SIZE]\n"
    "  Checks a job file and describes the job. Exit 0 when it is valid; exit 2 with every\n"
    "  error (file:line:column: field: problem) on stderr otherwise. --gpu-memory (80GiB, 141GB):\n"
    "  whether a cuda job fits GPUs of that size, and what would make it fit (exit 2 if not).\n";

// Three significant figures with a unit per factor of 1000, e.g. 31898880 -> "31.9M".
std::string FormatScaled(double v, const char* const units[6]) {
  int unit = 0;
  while (unit < 5 && std::fabs(v) >= 999.5) {
    v /= 1000;
    ++unit;
  }
  return absl::StrFormat("%.3g%s", v, units[unit]);
}

// Counts (parameters, tokens): 31.9M, 1.73B.
std::string FormatCount(double v) {
  static const char* const kUnits[] = {"", "K", "M", "B", "T", "P"};
  return FormatScaled(v, kUnits);
}

// FLOPs: 67.5M, 1.11T (G, not B, for 1e9).
std::string FormatFlops(double v) {
  static const char* const kUnits[] = {"", "K", "M", "G", "T", "P"};
  return FormatScaled(v, kUnits);
}

// The char tokenizer's vocabulary: the number of distinct byte values in the text. 0 when the
// file cannot be read (it was readable a moment ago, during validation).
int CountByteValues(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  bool seen[256] = {};
  int distinct = 0;
  std::vector<char> buf(1 << 20);
  while (in && distinct < 256) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    for (std::streamsize i = 0; i < in.gcount(); ++i) {
      unsigned char c = static_cast<unsigned char>(buf[static_cast<size_t>(i)]);
      if (!seen[c]) seen[c] = true, ++distinct;
    }
  }
  return distinct;
}

const char* TokenizerName(v1::Tokenizer t) {
  switch (t) {
    case v1::TOKENIZER_CHAR:
      return "char";
    case v1::TOKENIZER_GPT2:
      return "gpt2";
    case v1::TOKENIZER_PRETOKENIZED:
      return "pretokenized";
    default:
      return "unspecified";
  }
}

// "cosine", "wsd (decay over the last 20%)", "constant".
std::string ScheduleText(const v1::TrainSpec& t) {
  switch (t.schedule()) {
    case v1::SCHEDULE_WSD:
      return absl::StrCat("wsd (decay over the last ", Shortest(100 * (t.decay_fraction() > 0 ? t.decay_fraction() : 0.2)), "%)");
    case v1::SCHEDULE_CONSTANT:
      return "constant";
    default:
      return "cosine";
  }
}

// The recipe options a job turns on (MODEL.md "Options"), with what each adds; "" for none.
std::string RecipeText(const v1::JobSpec& spec) {
  const v1::ModelSpec& m = spec.model();
  const v1::MoeSpec& e = m.moe();
  const v1::TrainSpec& t = spec.train();
  const double hd = m.n_heads() > 0 ? static_cast<double>(m.d_model()) / m.n_heads() : 0;
  const double L = m.n_layers();
  std::vector<std::string> on;
  if (m.attention().qk_norm()) {
    on.push_back(absl::StrCat("qk_norm (+", FormatCount(2 * L * hd), " params)"));
  }
  if (m.attention().gate()) {
    on.push_back(absl::StrCat("gated attention (+", FormatCount(L * m.n_heads() * hd * m.d_model()), " params)"));
  }
  if (m.attention().dropout() > 0) on.push_back(absl::StrCat("attention dropout ", Shortest(m.attention().dropout())));
  const bool two = e.activation() == v1::ACTIVATION_RELU2 || e.activation() == v1::ACTIVATION_GELU;
  if (two) on.push_back(e.activation() == v1::ACTIVATION_RELU2 ? "relu2 experts (no w3)" : "gelu experts (no w3)");
  if (e.shared_experts() > 0) {
    const double fs = e.shared_expert_hidden();
    on.push_back(absl::StrCat(e.shared_experts(), " shared expert", e.shared_experts() == 1 ? "" : "s",
                              " of hidden ", e.shared_expert_hidden(), " (+",
                              FormatCount(L * e.shared_experts() * (two ? 2 : 3) * m.d_model() * fs),
                              " params, active)"));
  }
  if (e.router_score() == v1::SCORE_SIGMOID) on.push_back("sigmoid router");
  if (e.router_temperature() > 0 && e.router_temperature() != 1) {
    on.push_back(absl::StrCat("router temperature ", Shortest(e.router_temperature())));
  }
  if (e.bias_update_rate() > 0) {
    on.push_back(absl::StrCat("loss-free balancing (bias rate ", Shortest(e.bias_update_rate()), ")"));
  }
  if (e.expert_dropout() > 0) on.push_back(absl::StrCat("expert dropout ", Shortest(e.expert_dropout())));
  if (t.optimizer_state() == v1::STATE_BF16 || t.optimizer_state() == v1::STATE_INT8) {
    on.push_back(absl::StrCat("optimizer state ", t.optimizer_state() == v1::STATE_BF16 ? "bf16" : "int8"));
  }
  if (t.master_weights() == v1::PRECISION_BF16) on.push_back("bf16 master weights (stochastic rounding)");
  if (t.optimizer() == v1::OPTIMIZER_MUON) {
    on.push_back(absl::StrCat("Muon for block matrices (lr ", Shortest(t.muon_lr()), "), AdamW for the rest"));
  }
  return absl::StrJoin(on, ", ");
}

// The vocabulary the estimate needs: the char tokenizer's is the text's byte values.
void FixVocab(v1::JobSpec* spec) {
  if (spec->model().vocab_size() == 0) spec->mutable_model()->set_vocab_size(CountByteValues(spec->data().path()));
}

void Describe(const std::string& file, v1::JobSpec spec) {
  const v1::ModelSpec& m = spec.model();
  const v1::MoeSpec& e = m.moe();
  const v1::DataSpec& d = spec.data();
  const v1::TrainSpec& t = spec.train();
  const v1::ResourceSpec& r = spec.resources();
  const v1::CheckpointSpec& c = spec.checkpoint();

  std::string vocab = absl::StrCat(m.vocab_size());
  if (m.vocab_size() == 0) {  // char tokenizer: the text fixes it
    int counted = CountByteValues(d.path());
    spec.mutable_model()->set_vocab_size(counted);
    vocab = absl::StrCat(counted, " (byte values in the text)");
  }
  const ModelStats s = ComputeModelStats(spec);

  std::printf("%s: valid job (%s)\n", spec.name().c_str(), file.c_str());
  std::printf(
      "  model        d_model %d, %d layers, %d heads (%d kv heads, head size %d), seq_len %d,\n"
      "               vocab %s, %s embeddings, dropout %s, rope theta %s, norm eps %s\n",
      m.d_model(), m.n_layers(), m.n_heads(), m.n_kv_heads(), m.d_model() / m.n_heads(),
      m.seq_len(), vocab.c_str(), m.tie_embeddings() ? "tied" : "untied", Shortest(m.dropout()).c_str(),
      Shortest(m.attention().rope_theta() > 0 ? m.attention().rope_theta() : 10000.0).c_str(),
      Shortest(NormEps(m)).c_str());
  if (e.num_experts() == 1) {
    std::printf("  experts      dense (1 expert, hidden %d), replicated on every rank\n",
                e.expert_hidden());
  } else {
    std::string capacity = e.capacity_factor() == 0
                               ? std::string("dropless")
                               : absl::StrCat("capacity factor ", Shortest(e.capacity_factor()));
    std::printf("  experts      E %d, top-%d, hidden %d, %s, %d per rank; aux %s, z %s\n",
                e.num_experts(), e.top_k(), e.expert_hidden(), capacity.c_str(),
                e.num_experts() / r.ranks(), Shortest(e.aux_loss_coef()).c_str(), Shortest(e.z_loss_coef()).c_str());
  }
  const std::string recipe = RecipeText(spec);
  std::printf("  recipe       %s\n", recipe.empty() ? "base (no options)" : recipe.c_str());
  std::printf("  parameters   %s total, %s active (%s on each rank)\n",
              FormatCount(static_cast<double>(s.total_params)).c_str(),
              FormatCount(static_cast<double>(s.active_params)).c_str(),
              FormatCount(static_cast<double>(s.params_per_rank)).c_str());
  const int64_t tokens_per_step = static_cast<int64_t>(t.batch_size()) * m.seq_len();
  std::printf(
      "  compute      %s FLOPs/token (6 * active + 6 * L * D * T), %s tokens/step (%d x %d),\n"
      "               %s FLOPs/step\n",
      FormatFlops(s.flops_per_token).c_str(),
      FormatCount(static_cast<double>(tokens_per_step)).c_str(), t.batch_size(), m.seq_len(),
      FormatFlops(s.flops_per_token * static_cast<double>(tokens_per_step)).c_str());
  std::printf("  memory/rank  %s, total %s (estimate, %s%s)\n", DescribeComponents(s).c_str(),
              FormatBytes(static_cast<double>(s.total_bytes)).c_str(),
              r.device() == v1::DEVICE_CUDA ? "GPU memory" : "host memory",
              t.recompute() == v1::RECOMPUTE_FULL ? "; recompute full: each block's input and one block's activations"
                                                  : "");
  std::printf("  data         %s\n               tokenizer %s", d.path().c_str(),
              TokenizerName(d.tokenizer()));
  if (d.tokenizer() == v1::TOKENIZER_GPT2) std::printf(" (%s)", d.tokenizer_dir().c_str());
  std::printf(", val_fraction %s%s%s\n", Shortest(d.val_fraction()).c_str(), d.cache_dir().empty() ? "" : ", cache ",
              d.cache_dir().c_str());
  std::printf(
      "  train        %d steps, batch %d (%d per rank, %d micro-batch%s), lr %s -> %s, warmup %d, %s,\n"
      "               AdamW betas (%s, %s), weight_decay %s, grad_clip %s, %s, seed %llu\n",
      t.steps(), t.batch_size(), t.batch_size() / r.ranks(), t.grad_accum(),
      t.grad_accum() == 1 ? "" : "es", Shortest(t.lr()).c_str(), Shortest(t.min_lr()).c_str(), t.warmup_steps(),
      ScheduleText(t).c_str(), Shortest(t.beta1()).c_str(), Shortest(t.beta2()).c_str(),
      Shortest(t.weight_decay()).c_str(), Shortest(t.grad_clip()).c_str(),
      t.precision() == v1::PRECISION_BF16 ? "bf16" : "fp32",
      static_cast<unsigned long long>(t.seed()));
  std::printf("  eval         every %d steps, %d batches; log every %d steps\n", t.eval_every(),
              t.eval_batches(), t.log_every());
  std::string threads =
      r.threads_per_rank() == 0 ? "cores / ranks" : absl::StrCat(r.threads_per_rank());
  std::printf("  resources    %d rank%s, %s, %s launcher, threads per rank %s\n", r.ranks(),
              r.ranks() == 1 ? "" : "s", r.device() == v1::DEVICE_CUDA ? "cuda" : "cpu",
              r.launcher() == v1::LAUNCHER_SLURM ? "slurm" : "local", threads.c_str());
  if (r.launcher() == v1::LAUNCHER_SLURM) {
    const v1::SlurmSpec& sl = r.slurm();
    std::vector<std::string> parts = {
        absl::StrCat("partition ", sl.partition().empty() ? "(from extra args)" : sl.partition()),
        absl::StrCat(sl.nodes(), " nodes x ", sl.ranks_per_node(), " ranks"),
        absl::StrCat(sl.gpus_per_node(), " GPUs/node")};
    if (!sl.time_limit().empty()) parts.push_back(absl::StrCat("time ", sl.time_limit()));
    if (!sl.account().empty()) parts.push_back(absl::StrCat("account ", sl.account()));
    if (sl.extra_sbatch_args_size() > 0) {
      parts.push_back(absl::StrCat("extra ", absl::StrJoin(sl.extra_sbatch_args(), " ")));
    }
    std::printf("  slurm        %s\n", absl::StrJoin(parts, ", ").c_str());
  }
  std::printf("  checkpoint   every %d steps, keep %d, dir %s; max_restarts %d\n", c.every(),
              c.keep(), c.dir().empty() ? "(moed's state directory)" : c.dir().c_str(),
              spec.max_restarts());
  if (!spec.model().init_from().empty()) {
    std::printf("  init from    %s (weights only; the optimizer starts fresh)\n", spec.model().init_from().c_str());
  }
}

}  // namespace

int RunValidate(const std::string& file, const std::string& gpu_memory) {
  int64_t gpu_bytes = 0;
  if (!gpu_memory.empty()) {
    absl::StatusOr<int64_t> parsed = ParseMemorySize(gpu_memory);
    if (!parsed.ok()) {
      std::fprintf(stderr, "moectl validate: --gpu-memory: %s\n", std::string(parsed.status().message()).c_str());
      return 2;
    }
    gpu_bytes = *parsed;
  }
  if (file.empty()) {
    std::fprintf(stderr, "moectl validate: the job file name is empty\n%s", kUsage);
    return 2;
  }
  ParsedSpec parsed = LoadJobSpecFile(file);
  if (!parsed.ok()) {
    for (const SpecError& e : parsed.errors) std::fprintf(stderr, "%s\n", e.ToString().c_str());
    return 2;
  }
  // --gpu-memory decides whether the job is valid, so it is settled before anything reaches
  // stdout: a job that does not fit prints nothing there, its failure and the levers on stderr.
  const bool check_gpu = gpu_bytes > 0 && parsed.spec.resources().device() == v1::DEVICE_CUDA;
  MemoryFit fit;
  if (check_gpu) {
    v1::JobSpec sized = parsed.spec;
    FixVocab(&sized);
    fit = CheckGpuFit(sized, gpu_bytes);
  }
  // The levers, one a line under a heading, indented by `indent`; "" when there are none.
  auto levers = [&fit](const std::string& indent) {
    if (fit.levers.empty()) return std::string();
    std::string out = absl::StrCat(indent, "what would make it fit (estimated savings per GPU):\n");
    for (const MemoryLever& l : fit.levers) absl::StrAppend(&out, indent, "  ", DescribeLever(l), "\n");
    return out;
  };
  if (check_gpu && !fit.fits && !parsed.spec.resources().allow_oversubscribe_memory()) {
    for (const SpecError& w : parsed.warnings) std::fprintf(stderr, "warning: %s\n", w.ToString().c_str());
    std::fprintf(stderr,
                 "%s: resources: the job needs about %s per GPU (%s), %s more than the %s of --gpu-memory; moed "
                 "refuses it at submit unless resources.allow_oversubscribe_memory: true%s\n%s",
                 file.c_str(), FormatBytes(static_cast<double>(fit.need)).c_str(),
                 DescribeComponents(fit.stats).c_str(), FormatBytes(static_cast<double>(fit.need - fit.have)).c_str(),
                 FormatBytes(static_cast<double>(gpu_bytes)).c_str(),
                 fit.levers.empty() ? "; make the model smaller (model.d_model, n_layers, moe.expert_hidden)" : "",
                 levers("  ").c_str());
    return 2;
  }
  Describe(file, parsed.spec);
  for (const SpecError& w : parsed.warnings) std::fprintf(stderr, "warning: %s\n", w.ToString().c_str());
  if (gpu_bytes == 0) return 0;
  if (!check_gpu) {
    std::printf("  gpu memory   not checked: --gpu-memory is for device cuda jobs, this one runs on the CPU\n");
    return 0;
  }
  if (fit.fits) {
    std::printf("  gpu memory   %s\n", DescribeFit(fit).c_str());
    return 0;
  }
  std::printf("  gpu memory   does not fit: needs about %s per GPU, the GPU has %s: %s over\n%s",
              FormatBytes(static_cast<double>(fit.need)).c_str(), FormatBytes(static_cast<double>(fit.have)).c_str(),
              FormatBytes(static_cast<double>(fit.need - fit.have)).c_str(), levers("               ").c_str());
  std::printf("               resources.allow_oversubscribe_memory is true: moed will run it anyway\n");
  return 0;
}

}  // namespace moe::client
