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
#include "common/number_text.h"

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
  if (s.size() > 40) {
    size_t cut = 37;  // back to the first byte of the character the cut would split
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s = s.substr(0, cut) + "...";
  }
  return s;
}

size_t Utf8SequenceLength(std::string_view text, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(text[i + k]); };
  const unsigned char c = at(0);
  if (c < 0x80) return 1;
  // The second byte's range depends on the first (RFC 3629, section 4); later ones are 80..BF.
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // below: an overlong form
    if (c == 0xED) hi = 0x9F;  // above: a UTF-16 surrogate, U+D800..U+DFFF
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // below: an overlong form
    if (c == 0xF4) hi = 0x8F;  // above: past U+10FFFF
  } else {
    return 0;  // a continuation byte, an overlong C0/C1 lead, or F5..FF
  }
  if (i + len > text.size() || at(1) < lo || at(1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if ((at(k) & 0xC0) != 0x80) return 0;
  }
  return len;
}

bool IsControlCharacter(std::string_view text, size_t i, size_t len) {
  const auto c = static_cast<unsigned char>(text[i]);
  if (len == 1) return c < 0x20 || c == 0x7F;
  return len == 2 && c == 0xC2 && static_cast<unsigned char>(text[i + 1]) < 0xA0;
}

std::string Printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t len = Utf8SequenceLength(text, i);
    if (len == 0) {
      absl::StrAppend(&out, "\\x", absl::Hex(static_cast<unsigned char>(text[i]), absl::kZeroPad2));
      ++i;
      continue;
    }
    if (IsControlCharacter(text, i, len)) {
      // A C1 control, C2 80..C2 9F, is U+0080..U+009F: its second byte is its code point.
      absl::StrAppend(&out, len == 1 ? "\\x" : "\\u00",
                      absl::Hex(static_cast<unsigned char>(text[i + len - 1]), absl::kZeroPad2));
    } else {
      out.append(text.substr(i, len));
    }
    i += len;
  }
  return out;
}

std::string FormatDouble(double v) { return Shortest(v); }

std::string BelowFp32Message(const std::string& got) {
  return absl::StrCat("is below fp32's smallest normal number (about 1.2e-38), the precision training uses, where "
                      "it would be 0 or lose its digits; got ", got);
}

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

// Every part is made printable: a key, a value or a file name from the user reaches the terminal
// (or moed's reply) with its control characters and broken UTF-8 escaped.
std::string SpecError::ToString() const {
  std::string out;
  if (!file.empty()) {
    out = line > 0 ? absl::StrCat(file, ":", line, ":", column, ": ") : absl::StrCat(file, ": ");
  }
  if (!field.empty()) absl::StrAppend(&out, field, ": ");
  absl::StrAppend(&out, message);
  return job_spec_internal::Printable(out);
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
