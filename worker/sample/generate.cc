#include "worker/sample/generate.h"

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <iterator>
#include <numeric>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "moe/v1/job.pb.h"
#include "worker/checkpoint/checkpoint.h"
#include "common/files.h"
#include "common/usage_error.h"
#include "worker/parallel/comm_single.h"
#include "worker/data/checkpoint_spec.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/model/moe_bookkeeping.h"
#include "common/tokenizer.h"
#include "worker/sample/decoder.h"
#include "worker/model/cuda/cuda_decoder.h"

namespace moe {

namespace {

// An output flag's file: a path WriteUserFile will not replace (a directory, a device, a read-only
// file: FailedPrecondition) is the flag's value; a write that fails is not.
absl::Status WriteOutput(const std::string& path, std::string_view bytes) {
  absl::Status st = WriteUserFile(path, bytes);
  return st.code() == absl::StatusCode::kFailedPrecondition ? UsageError(std::move(st)) : st;
}

// A one-rank model holding a checkpoint's weights, with its spec and tokenizer.
struct LoadedModel {
  moe::v1::JobSpec spec;
  std::unique_ptr<Tokenizer> tokenizer;  // null for pretokenized data
  std::string saved_tokenizer;           // its tokenizer.txt as stored
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<Model> model;
};

// seq_len > 0 builds the model for that context instead of the job's (shorter is the same math:
// positions start at 0 and attention is causal).
absl::StatusOr<LoadedModel> LoadModel(const std::string& checkpoint, int seq_len = 0) {
  absl::StatusOr<CheckpointReader> resolved = ResolveCheckpointArgument(
      checkpoint, [](const std::string& line) { std::fprintf(stderr, "moe-worker: %s\n", line.c_str()); });
  if (!resolved.ok()) {
    // NotFound: the argument names no checkpoint (missing, no directory, none complete in it);
    // DataLoss (every one damaged) is not the caller's.
    return resolved.status().code() == absl::StatusCode::kNotFound ? UsageError(resolved.status()) : resolved.status();
  }
  const std::string& path = resolved->path();
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointWeights(*resolved);
  if (!ckpt.ok()) return ckpt.status();
  absl::StatusOr<CheckpointModelSpec> read = ReadCheckpointModelSpec(*ckpt, path);
  if (!read.ok()) return read.status();
  LoadedModel m;
  m.spec = std::move(read->spec);
  m.tokenizer = std::move(read->tokenizer);
  m.saved_tokenizer = ckpt->tokenizer;
  const int vocab = read->vocab;
  m.comm = CreateSingleProcessCommunicator();
  ModelConfig cfg = ModelConfig::FromSpec(m.spec, vocab);
  cfg.dropout = 0;
  // Inference is dropless, as the KV-cache decoders (one token at a time never fills a capacity)
  // and Hugging Face's Mixtral are: a capacity over the whole context dropped the newest tokens'
  // experts, so the uncached sampler drew other tokens than the cached one.
  cfg.capacity_factor = 0;
  cfg.inference_only = true;  // Forward only: no gradients or AdamW moments
  if (seq_len > 0) cfg.seq_len = seq_len;
  // The shapes from the layout alone, before a model of the spec's size is allocated.
  const ParamLayout layout(cfg, 0, 1);
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
  for (const ParamInfo& info : layout.params()) expected.emplace_back(info.name, info.global_shape);
  // Loss-free balancing's router biases choose the experts: the sampler routes with them.
  for (int l = 0; cfg.balances_by_bias() && l < cfg.layers; ++l) {
    expected.emplace_back(RouterBiasName(l), std::vector<int64_t>{cfg.experts});
  }
  if (absl::Status st = CheckCompatible(*ckpt, expected); !st.ok()) return st;
  m.model = std::make_unique<Model>(cfg, m.comm.get());
  std::vector<float> biases = m.model->RouterBiases();
  for (const NamedTensor& nt : ckpt->tensors) {
    if (const ParamInfo* info = m.model->layout().Find(nt.name)) {
      std::copy(nt.data.begin(), nt.data.end(), m.model->params().begin() + info->offset);
    }
    for (int l = 0; !biases.empty() && l < cfg.layers; ++l) {
      if (nt.name == RouterBiasName(l)) std::copy(nt.data.begin(), nt.data.end(), biases.begin() + l * cfg.experts);
    }
  }
  m.model->SetRouterBiases(biases);
  return m;
}

}  // namespace

absl::StatusOr<double> ScoreCheckpoint(const std::string& checkpoint, const std::string& batch_out) {
  return ScoreCheckpoint(checkpoint, batch_out, ScoreExtras());
}

absl::StatusOr<double> ScoreCheckpoint(const std::string& checkpoint, const std::string& batch_out,
                                       const ScoreExtras& extras) {
  // Each output its own file: one named twice kept only the last written, without a word.
  const std::pair<const char*, const std::string*> outs[] = {
      {"--batch-out", &batch_out}, {"--logits-out", &extras.logits_out}, {"--greedy-out", &extras.greedy_out}};
  for (size_t i = 0; i < std::size(outs); ++i) {
    for (size_t j = i + 1; j < std::size(outs); ++j) {
      if (outs[i].second->empty() || outs[j].second->empty()) continue;
      std::error_code ec1, ec2;
      const std::filesystem::path a = std::filesystem::weakly_canonical(*outs[i].second, ec1);
      const std::filesystem::path b = std::filesystem::weakly_canonical(*outs[j].second, ec2);
      const bool same = *outs[i].second == *outs[j].second || (!ec1 && !ec2 && a == b);
      if (same) {
        return UsageError(absl::InvalidArgumentError(absl::StrCat(
            outs[i].first, " and ", outs[j].first, " both name ", *outs[j].second, "; give each output its own file")));
      }
    }
  }
  absl::StatusOr<LoadedModel> m = LoadModel(checkpoint);
  if (!m.ok()) return m.status();
  // The greedy continuation needs a prompt of at least one token in the context (checked before
  // anything is written).
  if (const int T = m->model->config().seq_len; extras.greedy_tokens > 0 && T - extras.greedy_tokens < 1) {
    return UsageError(absl::InvalidArgumentError(
        absl::StrCat("--greedy ", extras.greedy_tokens, " leaves no prompt in seq_len ", T, ": give at most ", T - 1)));
  }
  absl::StatusOr<Dataset> data = LoadDataset(m->spec.data());
  if (!data.ok()) return data.status();
  const ModelConfig& cfg = m->model->config();
  // The job's data may have changed since it trained: too short for a sequence, or with ids
  // the model has no row for.
  if (absl::Status st = CheckSplits(*data, cfg.seq_len); !st.ok()) return st;
  if (data->vocab_size > cfg.vocab) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the job's data (", data->source, ") now has ", data->vocab_size, " token ids, more than the ", cfg.vocab,
        " of checkpoint ", checkpoint, "'s model; it changed since the job trained: score with the data it trained on"));
  }
  // The same count of ids can still mean other text (a char tokenizer's symbols are the text's
  // byte values): the score would be of another task. Resuming refuses this too.
  if (data->tokenizer) {
    const std::string diff =
        CheckpointTokenizerDifference(m->saved_tokenizer, *data->tokenizer, Gpt2TokenizerDir(m->spec.data()));
    if (!diff.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the job's data (", data->source, ") now gives another tokenizer than checkpoint ", checkpoint,
          " was trained with (", diff, "): its token ids would mean other text, so the score would not be the "
          "model's. Put back the data it trained on (data.path ", m->spec.data().path(),
          m->spec.data().tokenizer() == moe::v1::TOKENIZER_CHAR
              ? ""
              : absl::StrCat(", and the BPE files in data.tokenizer_dir ", Gpt2TokenizerDir(m->spec.data())),
          ", as the checkpoint's spec.json names them)"));
    }
  }
  const int b = m->spec.train().batch_size(), T = cfg.seq_len;
  std::vector<int32_t> x(static_cast<size_t>(b) * T), y(x.size());
  SampleBatch(data->val, m->spec.train().seed(), /*stream=*/1, /*step=*/0, 0, b, T, x.data(), y.data());
  BatchContext ctx;
  ctx.train = false;
  ctx.global_tokens = static_cast<int64_t>(b) * T;
  ctx.loss_scale = 1.0f / ctx.global_tokens;
  const double ce = m->model->Forward(x.data(), y.data(), b, ctx).ce_sum / ctx.global_tokens;
  // The batch as int32 rows: b rows of T inputs, then b rows of T targets.
  std::string bytes(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(int32_t));
  bytes.append(reinterpret_cast<const char*>(y.data()), y.size() * sizeof(int32_t));
  if (absl::Status st = WriteOutput(batch_out, bytes); !st.ok()) return st;
  const int V = cfg.vocab;
  if (!extras.logits_out.empty()) {
    const std::vector<float>& logits = m->model->logits();
    std::string out(reinterpret_cast<const char*>(logits.data()), static_cast<size_t>(T) * V * sizeof(float));
    if (absl::Status st = WriteOutput(extras.logits_out, out); !st.ok()) return st;
  }
  if (extras.greedy_tokens > 0) {
    const int n = extras.greedy_tokens, P = std::min(32, T - n);  // P >= 1: checked above
    // A model for exactly P + n positions, run again over the whole context for every new token.
    absl::StatusOr<LoadedModel> g = LoadModel(checkpoint, P + n);
    if (!g.ok()) return g.status();
    std::vector<int32_t> ids(x.begin(), x.begin() + P);
    std::vector<int32_t> gx(P + n, 0), gy(P + n, -1);
    for (int i = 0; i < n; ++i) {
      std::copy(ids.begin(), ids.end(), gx.begin());
      BatchContext bc;
      bc.train = false;
      bc.global_tokens = P + n;
      bc.loss_scale = 1.0f / (P + n);
      g->model->Forward(gx.data(), gy.data(), 1, bc);
      const float* row = g->model->logits().data() + (ids.size() - 1) * static_cast<size_t>(V);
      ids.push_back(static_cast<int32_t>(std::max_element(row, row + V) - row));
    }
    std::string out(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t));
    if (absl::Status st = WriteOutput(extras.greedy_out, out); !st.ok()) return st;
  }
  return ce;
}

int64_t ContextStart(int64_t start, int64_t size, int seq_len) {
  if (size - start <= seq_len) return start;
  return size - std::max(1, seq_len / 2);
}

namespace {

// One draw from the top_k most likely tokens at temperature, from logits (V).
int32_t SampleToken(const float* logits, int V, const SampleOptions& opts, std::mt19937_64* rng) {
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  const int keep = opts.top_k > 0 ? std::min(opts.top_k, V) : V;
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](int a, int b) { return logits[a] > logits[b]; });
  std::vector<double> probs(keep);
  for (int j = 0; j < keep; ++j) probs[j] = std::exp((logits[order[j]] - logits[order[0]]) / opts.temperature);
  std::discrete_distribution<int> pick(probs.begin(), probs.end());
  return order[pick(*rng)];
}

// The logits after ids[start..) by the whole-context forward (the oracle path).
std::vector<float> ContextLogits(Model& model, const std::vector<int32_t>& ids, int64_t start) {
  const ModelConfig& cfg = model.config();
  const int T = cfg.seq_len, V = cfg.vocab;
  const int n = static_cast<int>(ids.size() - start);
  std::vector<int32_t> x(T, 0), y(T, -1);
  std::copy(ids.begin() + start, ids.end(), x.begin());
  BatchContext bc;
  bc.train = false;
  bc.global_tokens = T;
  bc.loss_scale = 1.0f / T;
  model.Forward(x.data(), y.data(), 1, bc);
  const float* row = model.logits().data() + static_cast<size_t>(n - 1) * V;
  return std::vector<float>(row, row + V);
}

}  // namespace

absl::StatusOr<std::string> GenerateText(const SampleOptions& opts) {
  if (opts.tokens < 0) return UsageError(absl::InvalidArgumentError("--tokens must be >= 0"));
  if (!(opts.temperature > 0) || !std::isfinite(opts.temperature)) {
    return UsageError(absl::InvalidArgumentError("--temperature must be a number greater than 0"));
  }
  if (opts.top_k < 0) return UsageError(absl::InvalidArgumentError("--top-k must be >= 0 (0 = every token)"));
  if (!opts.kv_cache && opts.device == "cuda") {
    return UsageError(absl::InvalidArgumentError(
        "--no-kv-cache runs on the CPU (the whole context per token); drop --device cuda"));
  }
  absl::StatusOr<LoadedModel> loaded = LoadModel(opts.checkpoint);
  if (!loaded.ok()) return loaded.status();
  if (!loaded->tokenizer) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", opts.checkpoint, " was trained on pretokenized shards that name no tokenizer; "
        "set data.tokenizer_dir to the GPT-2 BPE files the shards were made with, so that its "
        "checkpoints can turn text into tokens and back"));
  }
  Tokenizer* tok = loaded->tokenizer.get();
  Model& model = *loaded->model;
  const ModelConfig& cfg = model.config();
  absl::StatusOr<std::vector<int32_t>> encoded = tok->TryEncode(opts.prompt);
  if (!encoded.ok()) return UsageError(encoded.status());
  std::vector<int32_t> ids = *std::move(encoded);
  if (ids.empty()) ids.push_back(0);
  for (int32_t id : ids) {
    if (id < 0 || id >= cfg.vocab) {
      return UsageError(absl::InvalidArgumentError(
          absl::StrCat("the prompt holds token ", id, ", outside the model's vocabulary of ", cfg.vocab)));
    }
  }
  // The decoder before on_ready (which prints the prompt): a device that cannot run is an error
  // with nothing written yet.
  std::unique_ptr<TokenDecoder> decoder;
  if (opts.kv_cache) {
    if (opts.device != "cpu") {
      absl::StatusOr<std::unique_ptr<TokenDecoder>> gpu =
          MakeCudaDecoder(cfg, model.layout(), model.params(), model.RouterBiases());
      if (gpu.ok()) {
        decoder = *std::move(gpu);
      } else if (opts.device == "cuda") {
        return absl::Status(gpu.status().code(), absl::StrCat("--device cuda: ", gpu.status().message()));
      }
    }
    if (!decoder) decoder = std::make_unique<CpuDecoder>(&model);
  }
  if (opts.device_used) *opts.device_used = decoder ? decoder->device() : "cpu";
  if (opts.on_ready) opts.on_ready();
  std::mt19937_64 rng(opts.seed);
  const int T = cfg.seq_len, V = cfg.vocab;
  int64_t start = ContextStart(0, static_cast<int64_t>(ids.size()), T);
  std::vector<float> logits;
  if (decoder) {
    for (size_t j = start; j < ids.size(); ++j) logits = decoder->Step(ids[j]);
  }
  // Draws come from the ids the tokenizer can write: a vocabulary padded past it (GPT-2's 50257
  // to 50304) has rows no text stands for.
  const int drawable = std::min(V, tok->vocab_size());
  for (int i = 0; i < opts.tokens; ++i) {
    if (!opts.kv_cache) logits = ContextLogits(model, ids, start);
    const int32_t next = SampleToken(logits.data(), drawable, opts, &rng);
    ids.push_back(next);
    if (opts.on_token) opts.on_token(tok->Decode({next}));
    const int64_t moved = ContextStart(start, static_cast<int64_t>(ids.size()), T);
    if (opts.kv_cache && i + 1 < opts.tokens) {
      if (moved != start) {  // the window restarts: recompute the cache from its new start
        decoder->Reset();
        for (size_t j = moved; j < ids.size(); ++j) logits = decoder->Step(ids[j]);
      } else {
        logits = decoder->Step(next);
      }
    }
    start = moved;
  }
  return tok->Decode(ids);
}

}  // namespace moe
