// What a checkpoint says its model is, for the tools that build a model from one (sampling,
// scoring, Hugging Face export): the job spec of its spec.json, the tokenizer it carries (null
// for pretokenized data that names none) and the vocabulary (the spec's, else the tokenizer's,
// else the checkpoint's meta), checked by the job-spec rules of model.* (ValidateModelSpec) so
// that a damaged or hand-edited spec is refused before any model is built.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "moe/v1/job.pb.h"
#include "worker/checkpoint/checkpoint.h"
#include "common/tokenizer.h"

namespace moe {

struct CheckpointModelSpec {
  moe::v1::JobSpec spec;
  std::unique_ptr<Tokenizer> tokenizer;
  int vocab = 0;
};

// The JobSpec of a checkpoint's spec.json (`path`: the checkpoint's directory). InvalidArgument
// naming path/spec.json with the JSON parser's error and its byte offset, or the field protobuf
// refused.
absl::Status ParseCheckpointJobSpec(const std::string& spec_json, const std::string& path, moe::v1::JobSpec* spec);

// `path`: the checkpoint's directory, for the messages. A damaged spec.json or tokenizer.txt is
// named with what is wrong in it.
absl::StatusOr<CheckpointModelSpec> ReadCheckpointModelSpec(const Checkpoint& ckpt, const std::string& path);

// "" when a checkpoint's tokenizer (`saved`: its tokenizer.txt, Tokenizer::Serialize; empty for
// pretokenized data) turns text into the ids `job`'s does; else what differs (TokenizerDifference).
// Resuming and scoring both refuse a difference: the ids would mean other text.
std::string CheckpointTokenizerDifference(const std::string& saved, const Tokenizer& job, const std::string& job_dir);

// How to give a resumed job the checkpoint's tokenizer back (the end of its refusal; the scorer,
// whose data the checkpoint names, says to put that data back instead).
std::string TokenizerFix(const moe::v1::DataSpec& data);

}  // namespace moe
