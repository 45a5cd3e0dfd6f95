#include "worker/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "moe/v1/job.pb.h"
#include "worker/checkpoint.h"
#include "worker/comm_single.h"
#include "worker/model.h"
#include "worker/tokenizer.h"

namespace moe {

absl::StatusOr<std::string> GenerateText(const SampleOptions& opts) {
  if (opts.tokens < 0) return absl::InvalidArgumentError("--tokens must be >= 0");
  if (opts.temperature <= 0) return absl::InvalidArgumentError("--temperature must be > 0");
  std::string path = opts.checkpoint;
  if (absl::StatusOr<std::string> latest = LatestCheckpoint(path); latest.ok()) path = *latest;
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(path);
  if (!ckpt.ok()) return ckpt.status();
  moe::v1::JobSpec spec;
  if (!google::protobuf::util::JsonStringToMessage(ckpt->spec_json, &spec).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, " holds no readable job spec"));
  }
  if (ckpt->tokenizer.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", path, " was trained on pretokenized shards; it has no tokenizer to turn text into tokens"));
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = DeserializeTokenizer(ckpt->tokenizer);
  if (!tok.ok()) return tok.status();

  std::unique_ptr<Communicator> comm = CreateSingleProcessCommunicator();
  ModelConfig cfg = ModelConfig::FromSpec(spec, (*tok)->vocab_size());
  cfg.dropout = 0;
  Model model(cfg, comm.get());
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
  for (const ParamInfo& info : model.layout().params()) expected.emplace_back(info.name, info.global_shape);
  if (absl::Status st = CheckCompatible(*ckpt, expected); !st.ok()) return st;
  for (const NamedTensor& nt : ckpt->tensors) {
    if (const ParamInfo* info = model.layout().Find(nt.name)) {
      std::copy(nt.data.begin(), nt.data.end(), model.params().begin() + info->offset);
    }
  }

  std::vector<int32_t> ids = (*tok)->Encode(opts.prompt);
  if (ids.empty()) ids.push_back(0);
  std::mt19937_64 rng(opts.seed);
  const int T = cfg.seq_len, V = cfg.vocab;
  for (int i = 0; i < opts.tokens; ++i) {
    // The model sees at most T tokens: the last T of the context.
    const int n = std::min<int>(static_cast<int>(ids.size()), T);
    std::vector<int32_t> ctx(ids.end() - n, ids.end());
    std::vector<int32_t> x(T, 0), y(T, -1);
    std::copy(ctx.begin(), ctx.end(), x.begin());
    BatchContext bc;
    bc.train = false;
    bc.global_tokens = T;
    bc.loss_scale = 1.0f / T;
    model.Forward(x.data(), y.data(), 1, bc);
    const float* logits = model.logits().data() + static_cast<size_t>(n - 1) * V;
    std::vector<int> order(V);
    std::iota(order.begin(), order.end(), 0);
    const int keep = opts.top_k > 0 ? std::min(opts.top_k, V) : V;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                      [&](int a, int b) { return logits[a] > logits[b]; });
    std::vector<double> probs(keep);
    for (int j = 0; j < keep; ++j) probs[j] = std::exp((logits[order[j]] - logits[order[0]]) / opts.temperature);
    std::discrete_distribution<int> pick(probs.begin(), probs.end());
    ids.push_back(order[pick(rng)]);
  }
  return (*tok)->Decode(ids);
}

}  // namespace moe
