#include "worker/data/checkpoint_spec.h"

#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "worker/data/dataset.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace moe {

absl::Status ParseCheckpointJobSpec(const std::string& spec_json, const std::string& path, moe::v1::JobSpec* spec) {
  const std::string file = absl::StrCat(path, "/spec.json");
  auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, " is not a readable job spec: ", why,
        "; the checkpoint's spec.json was damaged or edited: restore it from a copy, or use another checkpoint"));
  };
  // The JSON first, for the parser's error and its byte offset (protobuf's own message has neither
  // for a top-level array or scalar).
  google::protobuf::Struct doc;
  if (absl::Status st = ParseJsonObject(spec_json, &doc); !st.ok()) return refuse(st.message());
  if (auto st = google::protobuf::util::JsonStringToMessage(spec_json, spec); !st.ok()) {
    return refuse(absl::StrCat("a field protobuf's JobSpec refuses: ", std::string(st.message())));
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckpointModelSpec> ReadCheckpointModelSpec(const Checkpoint& ckpt, const std::string& path) {
  CheckpointModelSpec m;
  if (absl::Status st = ParseCheckpointJobSpec(ckpt.spec_json, path, &m.spec); !st.ok()) return st;
  const std::string restore = "; the checkpoint's tokenizer was damaged or edited: restore it from a copy, or use "
                              "another checkpoint";
  if (!ckpt.tokenizer.empty()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = DeserializeTokenizer(ckpt.tokenizer);
    if (!tok.ok()) {
      return absl::Status(tok.status().code(),
                          absl::StrCat(path, "/tokenizer.txt: ", tok.status().message(), restore));
    }
    m.tokenizer = *std::move(tok);
  }
  // A spec that leaves the vocabulary to the tokenizer trained wte.weight with one row per token:
  // a tokenizer of another size is the damaged file (not the weights' shape, nor the spec).
  if (m.spec.model().vocab_size() == 0 && m.tokenizer) {
    for (const NamedTensor& t : ckpt.tensors) {
      if (t.name != "wte.weight" || t.shape.empty() || t.shape[0] == m.tokenizer->vocab_size()) continue;
      return absl::InvalidArgumentError(absl::StrCat(
          path, "/tokenizer.txt: holds a tokenizer of ", m.tokenizer->vocab_size(), " tokens (",
          m.tokenizer->Describe(), ") but the checkpoint's wte.weight has ", t.shape[0], " rows, one per token",
          restore));
    }
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

std::string CheckpointTokenizerDifference(const std::string& saved, const Tokenizer& job, const std::string& job_dir) {
  if (saved.empty() || saved == job.Serialize()) return "";
  absl::StatusOr<std::unique_ptr<Tokenizer>> was = DeserializeTokenizer(saved);
  if (!was.ok()) return absl::StrCat("tokenizer.txt: ", was.status().message());
  return TokenizerDifference(**was, job, job_dir);
}

std::string TokenizerFix(const moe::v1::DataSpec& data) {
  if (data.tokenizer() == moe::v1::TOKENIZER_CHAR) {
    return "Train on data of the checkpoint's vocabulary (a char tokenizer's is the text's byte values)";
  }
  return absl::StrCat("Put back in data.tokenizer_dir (", Gpt2TokenizerDir(data),
                      ") the encoder.json and vocab.bpe the checkpoint was trained with (its tokenizer.txt "
                      "holds both; moectl export writes them as vocab.json and merges.txt)");
}

}  // namespace moe
