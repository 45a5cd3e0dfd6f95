// Reading a job file: text or file -> moe.v1.JobSpec by the proto's descriptor, with the
// FILE:LINE:COL of every key, unknown keys and wrong types; then defaults and checks, placed.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/job_spec.h"
#include "common/job_spec_internal.h"
#include "common/nearest_name.h"
#include "common/path_policy.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "yaml-cpp/depthguard.h"
#include "yaml-cpp/yaml.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;
using job_spec_internal::EnumChoices;
using job_spec_internal::EnumNames;
using job_spec_internal::IsUnderAny;
using job_spec_internal::JoinPath;
using job_spec_internal::MatchesPattern;
using job_spec_internal::ParentPath;
using job_spec_internal::Truncate;
using moe::v1::JobSpec;

// A job file is a few dozen lines; anything this large is a mistake (or not a job file).
constexpr size_t kMaxJobFileBytes = 1 << 20;

constexpr const char* kRequiredKeys[] = {
    "name",          "model.d_model", "model.n_layers", "model.n_heads",
    "model.seq_len", "data.path",     "train.steps",    "train.batch_size",
};

struct Pos {
  int line = 0;    // 1-based; 0 = unknown
  int column = 0;  // 1-based
};

Pos PosOf(const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return {};
  return {mark.line + 1, mark.column + 1};
}

constexpr absl::string_view kCoreTag = "tag:yaml.org,2002:";

// An unquoted scalar, or one with an explicit non-string core tag (`!!int 10`): a value that
// may be read as a number or a boolean. Quoted scalars (tag "!") and `!!str` are strings.
bool IsPlain(const YAML::Node& node) {
  if (!node.IsScalar()) return false;
  const std::string& tag = node.Tag();
  return tag == "?" || (absl::StartsWith(tag, kCoreTag) && tag != "tag:yaml.org,2002:str");
}
// The same, for a field of one type: an explicit tag must be that type's (`!!int 10` for an
// integer, `!!float` or `!!int` for a number, `!!bool` for a flag), so that `!!float 32`, `!!null 32`
// or `!!bool 1` is not read as the integer it spells.
bool IsPlainAs(const YAML::Node& node, std::initializer_list<absl::string_view> types) {
  if (!IsPlain(node) || node.Tag() == "?") return IsPlain(node);
  const absl::string_view type = absl::string_view(node.Tag()).substr(kCoreTag.size());
  return std::find(types.begin(), types.end(), type) != types.end();
}

// How a value that has the wrong type is shown in a message ("got ...").
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing (null)";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Scalar:
      if (node.Tag() == "!") {
        return absl::StrCat("the quoted string \"", Truncate(node.Scalar()), "\"");
      }
      if (!IsPlain(node)) return absl::StrCat("the string \"", Truncate(node.Scalar()), "\"");
      if (node.Tag() != "?") {  // an explicit core tag, shown as written
        return absl::StrCat("!!", node.Tag().substr(kCoreTag.size()), " ", Truncate(node.Scalar()));
      }
      // Numbers and booleans as written; other words quoted so that the message reads well.
      if (node.Scalar().size() > job_spec_internal::kMaxPatternInput) {
        return absl::StrCat("a value ", node.Scalar().size(), " characters long ('", Truncate(node.Scalar()), "')");
      }
      static const std::regex kNumberLike("[-+]?\\.?[0-9][-+.0-9eE]*|true|false");
      if (MatchesPattern(node.Scalar(), kNumberLike)) {
        return Truncate(node.Scalar());
      }
      return absl::StrCat("'", Truncate(node.Scalar()), "'");
    default:
      return "an undefined value";
  }
}

// The value of digits already matched as [-+]?[0-9]+ (a leading '+' allowed), or nullopt when
// it does not fit in T.
template <typename T>
std::optional<T> ParseDecimal(const std::string& scalar) {
  std::string_view digits = scalar;
  if (!digits.empty() && digits[0] == '+') digits.remove_prefix(1);
  T n = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return n;
}

// Every leaf key of the job spec, by name -> dotted paths, for "belongs under ..." hints.
void CollectPaths(const pb::Descriptor* d, const std::string& prefix,
                  std::multimap<std::string, std::string>* out) {
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    std::string path = JoinPath(prefix, f->name());
    out->emplace(f->name(), path);
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      CollectPaths(f->message_type(), path, out);
    }
  }
}

// First problem that makes `text` not a UTF-8 text file, as (byte offset, what), or nullopt.
// Well-formed UTF-8 only (RFC 3629): an encoded UTF-16 surrogate (CESU-8, or UTF-16 converted
// byte by byte), an overlong form or a code point past U+10FFFF is not text a reader agrees on.
std::optional<std::pair<size_t, std::string>> FindBinary(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == 0) return std::make_pair(i, std::string("a NUL byte here"));
    const size_t len = job_spec_internal::Utf8SequenceLength(text, i);
    if (len > 0) {
      i += len;
      continue;
    }
    const auto next = i + 1 < text.size() ? static_cast<unsigned char>(text[i + 1]) : 0;
    std::string why;
    if (c == 0xED && next >= 0xA0 && next <= 0xBF) {
      why = " (it starts an encoded UTF-16 surrogate, U+D800..U+DFFF; save the file as UTF-8)";
    } else if (c == 0xC0 || c == 0xC1 || (c == 0xE0 && next >= 0x80 && next < 0xA0) ||
               (c == 0xF0 && next >= 0x80 && next < 0x90)) {
      why = " (it starts an overlong encoding)";
    } else if (c >= 0xF5 || (c == 0xF4 && next >= 0x90)) {
      why = " (past U+10FFFF, the last code point)";
    }
    return std::make_pair(i, absl::StrFormat("byte 0x%02X here, which is not valid UTF-8%s", c, why));
  }
  return std::nullopt;
}

Pos OffsetToPos(std::string_view text, size_t offset) {
  Pos p{1, 1};
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++p.line;
      p.column = 1;
    } else {
      ++p.column;
    }
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// YAML -> JobSpec. Key names are the proto field names, so the walk follows the descriptor:
// one place that knows the types, and an unknown key is simply a name the descriptor lacks.

class YamlReader {
 public:
  explicit YamlReader(std::string file) : file_(std::move(file)) {
    CollectPaths(JobSpec::descriptor(), "", &all_paths_);
  }

  void ReadMapping(const YAML::Node& node, const std::string& prefix, pb::Message* msg) {
    const pb::Descriptor* desc = msg->GetDescriptor();
    std::map<std::string, int> seen_line;
    for (const auto& entry : node) {
      const YAML::Node key = entry.first;
      const YAML::Node value = entry.second;
      Pos key_pos = PosOf(key.Mark());
      if (!key.IsScalar()) {
        Error(key_pos, prefix, absl::StrCat("keys must be plain names, got ", Describe(key)));
        continue;
      }
      const std::string name = key.Scalar();
      // A key with spaces around it (no field's name) is shown quoted: "train.steps : unknown key"
      // hid the space the message is about.
      const bool spaced = name.empty() || absl::ascii_isspace(static_cast<unsigned char>(name.front())) ||
                          absl::ascii_isspace(static_cast<unsigned char>(name.back()));
      const std::string path = JoinPath(prefix, spaced ? absl::StrCat("\"", name, "\"") : name);
      if (auto seen = seen_line.find(name); seen != seen_line.end()) {
        Error(key_pos, path,
              absl::StrCat("duplicate key (first given on line ", seen->second, "); keep one"));
        bad.insert(path);
        continue;
      }
      seen_line[name] = key_pos.line;
      if (name == "<<" && key.Tag() == "?") {
        Error(key_pos, path, "YAML merge keys (<<) are not read in a job file; write the keys out here "
                             "(an alias of a whole value, key: *anchor, works)");
        continue;
      }
      const pb::FieldDescriptor* field = desc->FindFieldByName(name);
      if (field == nullptr) {
        UnknownKey(key_pos, prefix, path, name, desc);
        continue;
      }
      present.insert(path);
      key_positions[path] = key_pos;
      Pos value_pos = PosOf(value.Mark());
      value_positions[path] = (value.IsNull() || value_pos.line == 0) ? key_pos : value_pos;
      ReadField(value, path, field, msg);
    }
  }

  void Error(Pos pos, const std::string& field, std::string message) {
    errors.push_back(SpecError{file_, pos.line, pos.column, field, std::move(message)});
  }

  std::vector<SpecError> errors;
  std::map<std::string, Pos> key_positions;    // where each given key is written
  std::map<std::string, Pos> value_positions;  // where its value starts
  std::set<std::string> present;               // every key given in the file (dotted paths)
  std::set<std::string> bad;                   // keys whose value could not be read
  std::set<std::string> near_misses;           // known keys an unknown key was taken for

 private:
  void UnknownKey(Pos pos, const std::string& prefix, const std::string& path,
                  const std::string& name, const pb::Descriptor* desc) {
    std::vector<std::string> here;
    for (int i = 0; i < desc->field_count(); ++i) here.push_back(desc->field(i)->name());
    std::string where = prefix.empty() ? "at the top level" : absl::StrCat("under '", prefix, "'");
    if (auto near = NearestName(name, here)) {
      Error(pos, path, absl::StrCat("unknown key; did you mean '", *near, "'?"));
      near_misses.insert(JoinPath(prefix, *near));
      return;
    }
    auto [first, last] = all_paths_.equal_range(name);
    if (first != last) {
      std::vector<std::string> homes;
      for (auto it = first; it != last; ++it) homes.push_back(it->second);
      Error(pos, path,
            absl::StrCat("unknown key ", where, "; '", name, "' belongs at ",
                         absl::StrJoin(homes, " or ")));
      return;
    }
    Error(pos, path,
          absl::StrCat("unknown key; the keys ", where, " are: ", absl::StrJoin(here, ", ")));
  }

  // A value that cannot be read: reported where the value is; the key is then unusable.
  void BadValue(const std::string& path, std::string message) {
    Error(value_positions[path], path, std::move(message));
    bad.insert(path);
  }

  void TypeError(const std::string& path, const std::string& want, const YAML::Node& v) {
    BadValue(path, absl::StrCat("must be ", want, ", got ", Describe(v)));
  }

  void ReadField(const YAML::Node& v, const std::string& path, const pb::FieldDescriptor* f,
                 pb::Message* msg) {
    const pb::Reflection* r = msg->GetReflection();
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (v.IsNull()) return;  // "checkpoint:" with nothing under it: all defaults
      if (!v.IsMap()) return TypeError(path, "a mapping of keys (indented 'key: value' lines)", v);
      ReadMapping(v, path, r->MutableMessage(msg, f));
      return;
    }
    if (f->is_repeated()) {  // only lists of strings in this spec
      if (!v.IsSequence()) return TypeError(path, "a list of strings, e.g. [\"--qos=high\"]", v);
      size_t i = 0;
      for (const YAML::Node& item : v) {
        std::string item_path = absl::StrCat(path, "[", i++, "]");
        value_positions[item_path] = PosOf(item.Mark());
        if (!item.IsScalar()) return TypeError(item_path, "a string", item);
        r->AddString(msg, f, item.Scalar());
      }
      return;
    }
    if (v.IsNull()) return BadValue(path, "has no value; give one or remove the key");
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32: {
        std::optional<int64_t> n = ReadInteger(path, v, std::numeric_limits<int32_t>::min(),
                                               std::numeric_limits<int32_t>::max());
        if (n) r->SetInt32(msg, f, static_cast<int32_t>(*n));
        return;
      }
      case pb::FieldDescriptor::CPPTYPE_UINT64: {
        static const std::regex kUnsigned("\\+?[0-9]+");
        if (!IsPlainAs(v, {"int"}) || !MatchesPattern(v.Scalar(), kUnsigned)) {
          return TypeError(path, "a non-negative integer", v);
        }
        std::optional<uint64_t> n = ParseDecimal<uint64_t>(v.Scalar());
        if (!n) {
          return BadValue(
              path, absl::StrCat("must be at most ", std::numeric_limits<uint64_t>::max(), ", got ",
                                 Describe(v)));
        }
        r->SetUInt64(msg, f, *n);
        return;
      }
      case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
        std::optional<double> d = ReadNumber(path, v);
        if (d) r->SetDouble(msg, f, *d);
        return;
      }
      case pb::FieldDescriptor::CPPTYPE_BOOL: {
        std::string s = absl::AsciiStrToLower(v.IsScalar() ? v.Scalar() : "");
        if (!IsPlainAs(v, {"bool"}) || (s != "true" && s != "false")) {
          return TypeError(path, "true or false", v);
        }
        r->SetBool(msg, f, s == "true");
        return;
      }
      case pb::FieldDescriptor::CPPTYPE_STRING:
        if (!v.IsScalar()) return TypeError(path, "a string", v);
        r->SetString(msg, f, v.Scalar());
        return;
      case pb::FieldDescriptor::CPPTYPE_ENUM: {
        const std::vector<std::string> names = EnumNames(f->enum_type());
        std::string want = absl::StrCat("one of ", absl::StrJoin(names, ", "));
        if (!v.IsScalar()) return TypeError(path, want, v);
        for (const auto& [name, number] : EnumChoices(f->enum_type())) {
          if (v.Scalar() == name) {
            r->SetEnumValue(msg, f, number);
            return;
          }
        }
        std::string msg_text = absl::StrCat("must be ", want, ", got '", Truncate(v.Scalar()), "'");
        // Words users write for a value under another name (a GPU is CUDA's device here).
        const std::string lower = absl::AsciiStrToLower(v.Scalar());
        if ((lower == "gpu" || lower == "nvidia") &&
            std::find(names.begin(), names.end(), "cuda") != names.end()) {
          absl::StrAppend(&msg_text, "; did you mean 'cuda'?");
        } else if (auto near = NearestName(v.Scalar(), names)) {
          absl::StrAppend(&msg_text, "; did you mean '", *near, "'?");
        }
        return BadValue(path, msg_text);
      }
      default:
        return BadValue(path, "has a type this reader does not know (a bug in moe)");
    }
  }

  std::optional<int64_t> ReadInteger(const std::string& path, const YAML::Node& v, int64_t lo,
                                     int64_t hi) {
    static const std::regex kInteger("[-+]?[0-9]+");
    if (!IsPlainAs(v, {"int"}) || !MatchesPattern(v.Scalar(), kInteger)) {
      TypeError(path, "an integer", v);
      return std::nullopt;
    }
    std::optional<int64_t> n = ParseDecimal<int64_t>(v.Scalar());
    if (!n || *n < lo || *n > hi) {
      // Past what the field holds at all (its own range is checked later, with the value read).
      const bool negative = absl::StartsWith(v.Scalar(), "-");
      BadValue(path, negative ? absl::StrCat("is too small: an integer here is at least ", lo, ", got ", Describe(v))
                              : absl::StrCat("is too large: an integer here is at most ", hi, ", got ", Describe(v)));
      return std::nullopt;
    }
    return n;
  }

  std::optional<double> ReadNumber(const std::string& path, const YAML::Node& v) {
    static const std::regex kNumber("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
    static const std::regex kNonFinite("[-+]?\\.(inf|Inf|INF|nan|NaN|NAN)");
    if (IsPlain(v) && MatchesPattern(v.Scalar(), kNonFinite)) {
      BadValue(path, absl::StrCat("must be a finite number, got ", v.Scalar()));
      return std::nullopt;
    }
    if (!IsPlainAs(v, {"float", "int"}) || !MatchesPattern(v.Scalar(), kNumber)) {
      TypeError(path, "a number", v);
      return std::nullopt;
    }
    double d = std::strtod(v.Scalar().c_str(), nullptr);
    if (!std::isfinite(d)) {
      BadValue(path, absl::StrCat("is too large for a number, got ", v.Scalar()));
      return std::nullopt;
    }
    // 1e-99999999999 reads as 0 (past even double's range): below fp32's range, as 1e-320 is said to
    // be, not "must be greater than 0, got 0".
    const std::string& text = v.Scalar();
    if (d == 0 && text.substr(0, text.find_first_of("eE")).find_first_of("123456789") != std::string::npos) {
      BadValue(path, job_spec_internal::BelowFp32Message(Truncate(text)));
      return std::nullopt;
    }
    return d;
  }

  std::string file_;
  std::multimap<std::string, std::string> all_paths_;
};

// Keys whose 0 in the proto means "not set": a spec sent over gRPC that leaves them out gets the
// default, so the checks accept 0. A file that writes 0 did set them, to a value out of range;
// only the reader knows the key was written, so it refuses that here, where the value is.
void RefuseWrittenZeros(const JobSpec& spec, YamlReader* reader) {
  auto written_zero = [&](const std::string& path, double value) {
    return value == 0 && reader->present.count(path) && !IsUnderAny(path, reader->bad);
  };
  auto refuse = [&](const std::string& path, std::string message) {
    reader->Error(reader->value_positions[path], path, std::move(message));
    reader->bad.insert(path);
  };
  const struct {
    const char* path;
    double value;
    const char* message;
  } kZeroMeansUnset[] = {
      {"train.decay_fraction", spec.train().decay_fraction(),
       "must be greater than 0 and at most 1 (the share of the steps that decays), got 0; remove the "
       "key for the default 0.2"},
      {"model.attention.rope_theta", spec.model().attention().rope_theta(),
       "must be greater than 1 (1e6 for Mixtral and Qwen), got 0; remove the key for the default 10000"},
      {"model.norm_eps", spec.model().norm_eps(),
       "must be greater than 0 (RMSNorm's epsilon; 1e-06 for Qwen and DeepSeek), got 0; remove the key for the "
       "default 1e-05"},
      {"model.moe.router_temperature", spec.model().moe().router_temperature(),
       "must be at least 1e-06 (below 1 sharpens the router), got 0; remove the key for the default 1"},
      {"train.muon_lr", spec.train().muon_lr(),
       "must be greater than 0 (Muon's peak learning rate), got 0; remove the key for the default, train.lr"},
      {"model.moe.shared_expert_hidden", static_cast<double>(spec.model().moe().shared_expert_hidden()),
       "must be between 1 and 1048576 (the shared experts' hidden size), got 0; remove the key for the "
       "default, model.moe.expert_hidden"},
  };
  for (const auto& k : kZeroMeansUnset) {
    if (written_zero(k.path, k.value)) refuse(k.path, k.message);
  }
  // 0 is "count the text's byte values" for char; pretokenized shards need the number given.
  if (written_zero("model.vocab_size", spec.model().vocab_size()) && !IsUnderAny("data.tokenizer", reader->bad) &&
      spec.data().tokenizer() == v1::TOKENIZER_PRETOKENIZED) {
    refuse("model.vocab_size",
           "must be at least 1 with tokenizer pretokenized (the number of token ids the shards use: their "
           "largest id + 1), got 0");
  }
}

ParsedSpec SingleError(const std::string& file, Pos pos, std::string message) {
  ParsedSpec out;
  out.errors.push_back(SpecError{file, pos.line, pos.column, "", std::move(message)});
  return out;
}

ParsedSpec TooLarge(const std::string& file, uintmax_t bytes) {
  return SingleError(file, {},
                     absl::StrCat("is too large for a job file (", bytes, " bytes, the limit is ",
                                  kMaxJobFileBytes, ")"));
}

// The paths a job reads and writes, by the rule the worker applies (common/path_policy.h: no
// system directories, or only the directories MOE_DATA_ROOTS / MOE_CHECKPOINT_ROOTS name when
// set): a warning, since moed (its own --data-root / --checkpoint-root, perhaps on another
// machine) is what decides at submit; here it says early what a moed without roots refuses.
std::vector<SpecError> PathWarnings(const moe::v1::JobSpec& spec) {
  const absl::Status st = CheckSpecPaths(PathPolicy::FromEnvironment(), spec);
  if (st.ok()) return {};
  // The message starts with the field ("data.path: ...", "model.init_from holds: ...").
  const std::string message(st.message());
  SpecError e;
  e.field = message.substr(0, message.find_first_of(" :"));
  const std::string prefix = e.field + ": ";
  e.message = absl::StartsWith(message, prefix) ? message.substr(prefix.size()) : message;
  absl::StrAppend(&e.message, "; moed refuses it at submit unless its --data-root / --checkpoint-root allow it");
  return {std::move(e)};
}

// Text that passed the size and UTF-8 checks -> a spec read, defaulted and checked, with every
// error placed where its key (or the nearest enclosing key the file has) is written.
ParsedSpec ParseChecked(const std::string& yaml_text, const std::string& file_name,
                        const std::string& base_dir) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(yaml_text);
  } catch (const YAML::DeepRecursion& e) {
    return SingleError(file_name, PosOf(e.mark),
                       absl::StrCat("invalid YAML: nested too deeply (", e.depth(), " levels)"));
  } catch (const YAML::ParserException& e) {
    // A tab where YAML wants indentation reads "illegal map value" or the like: say so.
    std::string hint;
    if (!e.mark.is_null() && e.mark.line >= 0) {
      const std::vector<absl::string_view> lines = absl::StrSplit(yaml_text, '\n');
      for (int l = std::max(0, e.mark.line - 1); l <= e.mark.line && l < static_cast<int>(lines.size()); ++l) {
        const absl::string_view line = lines[static_cast<size_t>(l)];
        const size_t text = line.find_first_not_of(" \t");
        if (line.substr(0, text == absl::string_view::npos ? line.size() : text).find('\t') != absl::string_view::npos) {
          hint = absl::StrCat(" (line ", l + 1, " is indented with a tab; YAML indents with spaces only)");
          break;
        }
      }
    }
    return SingleError(file_name, PosOf(e.mark), absl::StrCat("invalid YAML: ", e.msg, hint));
  }
  const char* kEmpty =
      "is empty; a job file is a YAML mapping with at least name, model, data and train "
      "(see examples/tiny-shakespeare.yaml)";
  if (docs.empty()) return SingleError(file_name, {}, kEmpty);
  if (docs.size() > 1) {
    return SingleError(file_name, PosOf(docs[1].Mark()),
                       "holds more than one YAML document ('---'); a job file is one mapping");
  }
  const YAML::Node& root = docs[0];
  if (root.IsNull()) return SingleError(file_name, {}, kEmpty);
  if (!root.IsMap()) {
    return SingleError(file_name, PosOf(root.Mark()),
                       absl::StrCat("must be a YAML mapping of keys (name:, model:, data:, train:, "
                                    "...), got ",
                                    Describe(root)));
  }

  ParsedSpec out;
  YamlReader reader(file_name);
  reader.ReadMapping(root, "", &out.spec);

  // A missing required key is reported where its parent mapping is written.
  Pos root_pos = PosOf(root.Mark());
  auto position_of_parent = [&](std::string path) {
    for (path = ParentPath(path); !path.empty(); path = ParentPath(path)) {
      if (auto it = reader.key_positions.find(path); it != reader.key_positions.end()) {
        return it->second;
      }
    }
    return root_pos;
  };
  // A whole missing section is one error; a key already suggested for a misspelt one is not
  // reported again.
  std::map<std::string, std::vector<std::string>> missing;  // parent -> missing leaves
  for (const char* key : kRequiredKeys) {
    if (reader.present.count(key) || IsUnderAny(key, reader.bad)) continue;
    reader.bad.insert(key);
    if (reader.near_misses.count(key)) continue;
    std::string parent = ParentPath(key);
    missing[parent].push_back(std::string(key).substr(parent.empty() ? 0 : parent.size() + 1));
  }
  for (const auto& [parent, leaves] : missing) {
    if (parent.empty()) {
      for (const std::string& leaf : leaves) {
        reader.Error(root_pos, leaf,
                     absl::StrCat("required key missing; add '", leaf, ":' at the top level"));
      }
    } else if (!reader.present.count(parent)) {
      reader.Error(position_of_parent(parent + ".x"), parent,
                   absl::StrCat("required section missing; add '", parent, ":' with ",
                                absl::StrJoin(leaves, ", "), " under it"));
    } else {
      for (const std::string& leaf : leaves) {
        reader.Error(position_of_parent(JoinPath(parent, leaf)), JoinPath(parent, leaf),
                     absl::StrCat("required key missing; add '", leaf, ":' under '", parent, "'"));
      }
    }
  }

  RefuseWrittenZeros(out.spec, &reader);
  job_spec_internal::ResolvePaths(&out.spec, base_dir);
  job_spec_internal::ApplyDefaults(&out.spec, reader.present, &reader.bad);

  // The same rules as a gRPC spec; each error goes back to where its key (or the nearest
  // enclosing key the file has) is written.
  auto place = [&](std::vector<SpecError> found, std::vector<SpecError>* into) {
    for (SpecError& e : found) {
      Pos pos = root_pos;
      for (std::string p = e.field; !p.empty(); p = ParentPath(p)) {
        if (auto it = reader.value_positions.find(p); it != reader.value_positions.end()) {
          pos = p == e.field ? it->second : reader.key_positions[p];
          break;
        }
      }
      e.file = file_name;
      e.line = pos.line;
      e.column = pos.column;
      into->push_back(std::move(e));
    }
    std::stable_sort(into->begin(), into->end(), [](const SpecError& a, const SpecError& b) {
      return std::make_pair(a.line, a.column) < std::make_pair(b.line, b.column);
    });
  };
  out.errors = std::move(reader.errors);
  place(job_spec_internal::CheckJobSpec(out.spec, reader.bad), &out.errors);
  if (out.errors.empty()) {
    std::vector<SpecError> warnings = job_spec_internal::AdviseJobSpec(out.spec);
    for (SpecError& w : PathWarnings(out.spec)) warnings.push_back(std::move(w));
    for (SpecError& w : job_spec_internal::TextDataWarnings(out.spec)) warnings.push_back(std::move(w));
    for (SpecError& w : job_spec_internal::UnreadKeyWarnings(out.spec, reader.present)) warnings.push_back(std::move(w));
    place(std::move(warnings), &out.warnings);
  }
  return out;
}

}  // namespace

ParsedSpec ParseJobSpec(const std::string& yaml_text, const std::string& file_name,
                        const std::string& base_dir) {
  if (yaml_text.size() > kMaxJobFileBytes) {
    return TooLarge(file_name, yaml_text.size());
  }
  if (auto binary = FindBinary(yaml_text)) {
    return SingleError(file_name, OffsetToPos(yaml_text, binary->first),
                       absl::StrCat("is not a UTF-8 text file: found ", binary->second,
                                    "; a job file is YAML text"));
  }
  try {
    ParsedSpec out = ParseChecked(yaml_text, file_name, base_dir);
    if (!out.ok()) out.spec.Clear();  // nothing half-validated escapes
    return out;
  } catch (const YAML::Exception& e) {
    return SingleError(file_name, PosOf(e.mark), absl::StrCat("cannot read YAML: ", e.msg));
  } catch (const std::exception& e) {
    return SingleError(file_name, {}, absl::StrCat("cannot read: ", e.what()));
  }
}

std::optional<NonTextByte> FindNonTextByte(std::string_view text) {
  const auto binary = FindBinary(text);
  if (!binary) return std::nullopt;
  const Pos at = OffsetToPos(text, binary->first);
  return NonTextByte{at.line, at.column, binary->second};
}

std::string DescribeYamlValue(const YAML::Node& node) { return Describe(node); }

ParsedSpec LoadJobSpecFile(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {  // a link loop, no permission to look, ...
    return SingleError(path, {}, absl::StrCat("cannot be opened (", ec.message(),
                                              "); give the path of a job file (e.g. job.yaml)"));
  }
  if (ec || !fs::exists(st)) {
    return SingleError(path, {}, "does not exist; give the path of a job file (e.g. job.yaml)");
  }
  if (fs::is_directory(st)) {
    return SingleError(path, {}, "is a directory; give the path of a job file (e.g. job.yaml)");
  }
  if (!fs::is_regular_file(st)) {
    return SingleError(path, {},
                       "is not a regular file; give the path of a job file (e.g. job.yaml)");
  }
  uintmax_t size = fs::file_size(path, ec);
  if (!ec && size > kMaxJobFileBytes) {
    return TooLarge(path, size);
  }
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return SingleError(path, {}, std::string(text.status().message()));
  std::string base_dir = fs::path(path).parent_path().string();
  return ParseJobSpec(*text, path, base_dir.empty() ? "." : base_dir);
}

}  // namespace moe
