#include "worker/data/checkpoint_spec.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "google/protobuf/util/json_util.h"

namespace moe {

absl::StatusOr<CheckpointModelSpec> ReadCheckpointModelSpec(const Checkpoint& ckpt, const std::string& path) {
  CheckpointModelSpec m;
  if (!google::protobuf::util::JsonStringToMessage(ckpt.spec_json, &m.spec).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, " holds no readable job spec"));
  }
  if (!ckpt.tokenizer.empty()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = DeserializeTokenizer(ckpt.tokenizer);
    if (!tok.ok()) return tok.status();
    m.tokenizer = *std::move(tok);
  }
  m.vocab = m.spec.model().vocab_size();
  if (m.vocab == 0 && m.tokenizer) m.vocab = m.tokenizer->vocab_size();
  if (m.vocab == 0 && ckpt.meta.count("vocab_size")) m.vocab = std::atoi(ckpt.meta.at("vocab_size").c_str());
  if (std::vector<SpecError> errors = ValidateModelSpec(m.spec, m.vocab); !errors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", path, " holds a job spec (spec.json) no model can be built from:\n", FormatSpecErrors(errors)));
  }
  return m;
}

}  // namespace moe
