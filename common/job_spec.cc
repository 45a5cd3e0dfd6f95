// The job-spec validator's small shared pieces (field paths, enum names, value formatting) and
// the error formatting of common/job_spec.h. Reading is in job_spec_read.cc, defaults in
// job_spec_defaults.cc, the rules in job_spec_checks.cc.
#include "common/job_spec.h"

#include <algorithm>
#include <cstdint>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/job_spec_internal.h"

namespace moe {
namespace job_spec_internal {

namespace pb = google::protobuf;

bool MatchesPattern(const std::string& value, const std::regex& pattern) {
  return value.size() <= kMaxPatternInput && std::regex_match(value, pattern);
}

std::string JoinPath(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : absl::StrCat(prefix, ".", key);
}

std::string ParentPath(const std::string& path) {
  size_t cut = path.find_last_of(".[");
  return cut == std::string::npos ? "" : path.substr(0, cut);
}

bool IsUnderAny(const std::string& path, const std::set<std::string>& roots) {
  for (std::string p = path;; p = ParentPath(p)) {
    if (roots.count(p)) return true;
    if (p.empty()) return false;
  }
}

std::string Truncate(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

std::string FormatDouble(double v) { return absl::StrFormat("%g", v); }

std::string RoundsToOneInFp32(double v) {
  if (!(v < 1) || static_cast<float>(v) < 1.0f) return "";
  return absl::StrFormat("is 1 in fp32, where the worker computes with it (%.10g rounds up); use 0.9999999 or less",
                         v);
}

std::vector<std::pair<std::string, int>> EnumChoices(const pb::EnumDescriptor* e) {
  std::vector<std::pair<std::string, int>> out;
  for (int i = 0; i < e->value_count(); ++i) {
    const std::string& full = e->value(i)->name();
    std::string name = absl::AsciiStrToLower(full.substr(full.find('_') + 1));
    if (name == "unspecified") continue;
    out.emplace_back(name, e->value(i)->number());
  }
  return out;
}

std::vector<std::string> EnumNames(const pb::EnumDescriptor* e) {
  std::vector<std::string> names;
  for (const auto& c : EnumChoices(e)) names.push_back(c.first);
  return names;
}

std::string EnumName(const pb::EnumDescriptor* e, int number) {
  for (const auto& [name, value] : EnumChoices(e)) {
    if (value == number) return name;
  }
  return absl::StrCat("unspecified (", number, ")");
}

}  // namespace job_spec_internal

std::string SpecError::ToString() const {
  std::string out;
  if (!file.empty()) {
    out = line > 0 ? absl::StrCat(file, ":", line, ":", column, ": ") : absl::StrCat(file, ": ");
  }
  if (!field.empty()) absl::StrAppend(&out, field, ": ");
  absl::StrAppend(&out, message);
  return out;
}

std::string FormatSpecErrors(const std::vector<SpecError>& errors) {
  std::vector<std::string> lines;
  lines.reserve(errors.size());
  for (const SpecError& e : errors) lines.push_back(e.ToString());
  return absl::StrJoin(lines, "\n");
}

std::vector<SpecError> ValidateModelSpec(moe::v1::JobSpec spec, int vocab_size) {
  moe::v1::ModelSpec* m = spec.mutable_model();
  if (m->n_kv_heads() == 0) m->set_n_kv_heads(m->n_heads());
  if (m->moe().num_experts() == 0) m->mutable_moe()->set_num_experts(1);
  if (m->moe().expert_hidden() == 0) {
    m->mutable_moe()->set_expert_hidden(static_cast<int>(std::min<int64_t>(4 * int64_t{m->d_model()}, 1 << 30)));
  }
  m->set_vocab_size(vocab_size);
  static const std::set<std::string> kNotModel = {"name",       "data",         "train",
                                                  "resources",  "checkpoint",   "max_restarts",
                                                  "model.init_from"};
  std::vector<SpecError> errors = job_spec_internal::CheckJobSpec(spec, kNotModel);
  if (vocab_size < 1) {
    errors.push_back(SpecError{"", 0, 0, "model.vocab_size",
                               "is 0 and no tokenizer or meta.json gives the vocabulary"});
  }
  return errors;
}

absl::StatusOr<moe::v1::JobSpec> LoadJobSpec(const std::string& path) {
  ParsedSpec parsed = LoadJobSpecFile(path);
  if (!parsed.ok()) return absl::InvalidArgumentError(FormatSpecErrors(parsed.errors));
  return std::move(parsed.spec);
}

}  // namespace moe
