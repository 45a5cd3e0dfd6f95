// The one job-spec validator used by moectl, moed and moe-worker: YAML -> moe.v1.JobSpec with
// every field checked, defaults applied, and errors that name file:line:column, the field
// path, what is wrong and what would be right. All errors of a file are reported at once.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moe/v1/job.pb.h"

namespace YAML {
class Node;
}

namespace moe {

// CPU threads a rank may ask for (resources.threads_per_rank, moe-worker --threads): well past
// any machine's cores; OpenMP fails, or crashes, tens of thousands of threads in.
inline constexpr int kMaxThreadsPerRank = 1024;

struct SpecError {
  std::string file;   // as given by the caller; "" for a spec that came over gRPC
  int line = 0;       // 1-based; 0 when unknown
  int column = 0;     // 1-based; 0 when unknown
  std::string field;  // dotted path, e.g. "model.moe.top_k"; "" for the whole file
  std::string message;
  // "job.yaml:14:12: model.moe.top_k: must be between 1 and num_experts (8), got 9"
  std::string ToString() const;
};

struct ParsedSpec {
  moe::v1::JobSpec spec;
  std::vector<SpecError> errors;
  // A valid spec's values that are almost surely a mistake (an AdamW lr of 5, evaluation that
  // takes longer than training): printed as warnings, the job still valid.
  std::vector<SpecError> warnings;
  bool ok() const { return errors.empty(); }
};

// Parses YAML text. file_name is used in messages; relative data paths resolve against
// base_dir and are stored absolute. Runs ValidateJobSpec too, mapping its errors to positions.
ParsedSpec ParseJobSpec(const std::string& yaml_text, const std::string& file_name,
                        const std::string& base_dir);

// Reads and parses a file (a missing, unreadable or binary file is an error, not a crash).
ParsedSpec LoadJobSpecFile(const std::string& path);

// Checks ranges and relations of a complete spec (defaults already applied), as moed does for
// a spec that came straight over gRPC. Errors carry field paths but no positions.
std::vector<SpecError> ValidateJobSpec(const moe::v1::JobSpec& spec);

// The rules of model.* alone, for a spec read back from a checkpoint's spec.json before a model
// is built from it (sampling, scoring, export): a damaged or hand-edited one must be refused, not
// divide by zero heads. vocab_size: the vocabulary the reader resolved (the spec's, else the
// tokenizer's or meta.json's). What the job trained on (data, resources, model.init_from) may be
// gone and is not checked; n_kv_heads, num_experts and expert_hidden may be 0, as in checkpoints
// older than those keys (the model reads them as n_heads, 1 and 4 * d_model).
std::vector<SpecError> ValidateModelSpec(moe::v1::JobSpec spec, int vocab_size);

// The job-file reader's checks, for the other YAML files moe reads (moectl's config). Where text
// stops being UTF-8 text: the 1-based line and column and what is there ("a NUL byte here", "byte
// 0xFF here, which is not valid UTF-8"); nullopt for text.
struct NonTextByte {
  int line = 0;
  int column = 0;
  std::string what;
};
std::optional<NonTextByte> FindNonTextByte(std::string_view text);
// A value of the wrong type as a message names it after "got": "a list", "a mapping", "nothing
// (null)", "the quoted string \"x\"", "'word'", "12".
std::string DescribeYamlValue(const YAML::Node& node);

// All errors, one per line, for a status message or a terminal.
std::string FormatSpecErrors(const std::vector<SpecError>& errors);

// The same as LoadJobSpecFile, as a status: InvalidArgument with every error when it fails.
absl::StatusOr<moe::v1::JobSpec> LoadJobSpec(const std::string& path);

// How many of a text's or shard set's n tokens form the training split (the first ones; the rest
// are validation) at data.val_fraction: the worker's split, and validate's bound on it.
// model.norm_eps as the model uses it: a spec that leaves it 0 (one sent over gRPC, or stored before
// the key existed) gets MODEL.md's 1e-5.
inline double NormEps(const moe::v1::ModelSpec& m) { return m.norm_eps() > 0 ? m.norm_eps() : 1e-5; }

inline size_t TrainSplitTokens(size_t n, double val_fraction) {
  const auto train = static_cast<size_t>(static_cast<double>(n) * (1.0 - val_fraction));
  return train < n ? train : n;
}

}  // namespace moe
