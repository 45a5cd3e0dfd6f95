#include "common/job_spec.h"

#include <glob.h>
#include <unistd.h>

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
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "yaml-cpp/depthguard.h"
#include "yaml-cpp/yaml.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;
using moe::v1::JobSpec;

// A job file is a few dozen lines; anything this large is a mistake (or not a job file).
constexpr size_t kMaxJobFileBytes = 1 << 20;

// Sanity limits: far above any model this service trains, low enough that derived values
// (expert_hidden = 4 * d_model, products of sizes) stay far from int32 and int64 limits.
constexpr int64_t kMaxDModel = 1 << 16;
constexpr int64_t kMaxLayers = 1 << 12;
constexpr int64_t kMaxSeqLen = 1 << 20;
constexpr int64_t kMaxExperts = 1 << 12;
constexpr int64_t kMaxExpertHidden = 1 << 20;
constexpr int64_t kMaxRanks = 1 << 16;

// GPT-2's BPE has 50257 tokens; 50304 (a multiple of 64) is the usual padded size.
constexpr int64_t kGpt2Vocab = 50257;
constexpr int64_t kGpt2PaddedVocab = 50304;
// Token shards hold uint16 ids.
constexpr int64_t kMaxVocab = 1 << 16;

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

std::string JoinPath(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : absl::StrCat(prefix, ".", key);
}

// "a.b[2]" -> "a.b" -> "a" -> "".
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

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The candidate nearest to `word`, when it is near enough to be a likely typo.
std::optional<std::string> NearestName(const std::string& word,
                                       const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  const std::string lower = absl::AsciiStrToLower(word);
  for (const std::string& c : candidates) {
    size_t d = EditDistance(lower, c);
    if (d < best_distance) best_distance = d, best = c;
  }
  size_t allowed = std::max<size_t>(1, std::min<size_t>(3, word.size() / 3));
  if (best && best_distance <= allowed) return best;
  return std::nullopt;
}

std::string Truncate(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// An unquoted scalar, or one with an explicit non-string core tag (`!!int 10`): a value that
// may be read as a number or a boolean. Quoted scalars (tag "!") and `!!str` are strings.
bool IsPlain(const YAML::Node& node) {
  if (!node.IsScalar()) return false;
  const std::string& tag = node.Tag();
  return tag == "?" ||
         (absl::StartsWith(tag, "tag:yaml.org,2002:") && tag != "tag:yaml.org,2002:str");
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
      // Numbers and booleans as written; other words quoted so that the message reads well.
      static const std::regex kNumberLike("[-+]?\\.?[0-9][-+.0-9eE]*|true|false");
      if (std::regex_match(node.Scalar(), kNumberLike)) {
        return Truncate(node.Scalar());
      }
      return absl::StrCat("'", Truncate(node.Scalar()), "'");
    default:
      return "an undefined value";
  }
}

std::string FormatDouble(double v) { return absl::StrFormat("%g", v); }

// YAML names of an enum's values: TOKENIZER_CHAR -> "char"; UNSPECIFIED is not a choice.
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

std::string EnumName(const pb::EnumDescriptor* e, int number) {
  for (const auto& [name, value] : EnumChoices(e)) {
    if (value == number) return name;
  }
  return absl::StrCat("unspecified (", number, ")");
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
std::optional<std::pair<size_t, std::string>> FindBinary(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == 0) return std::make_pair(i, std::string("a NUL byte here"));
    size_t len = c < 0x80           ? 1
                 : (c >> 5) == 0x6  ? 2
                 : (c >> 4) == 0xE  ? 3
                 : (c >> 3) == 0x1E ? 4
                                    : 0;
    if (len == 0 || i + len > text.size() || (len == 2 && c < 0xC2)) {
      return std::make_pair(i, absl::StrFormat("byte 0x%02X here, which is not valid UTF-8", c));
    }
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) {
        return std::make_pair(i, absl::StrFormat("byte 0x%02X here, which is not valid UTF-8", c));
      }
    }
    i += len;
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
      const std::string path = JoinPath(prefix, name);
      if (auto seen = seen_line.find(name); seen != seen_line.end()) {
        Error(key_pos, path,
              absl::StrCat("duplicate key (first given on line ", seen->second, "); keep one"));
        bad.insert(path);
        continue;
      }
      seen_line[name] = key_pos.line;
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

  void TypeError(const std::string& path, const std::string& want, const YAML::Node& v) {
    Error(value_positions[path], path, absl::StrCat("must be ", want, ", got ", Describe(v)));
    bad.insert(path);
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
    if (v.IsNull()) {
      Error(value_positions[path], path, "has no value; give one or remove the key");
      bad.insert(path);
      return;
    }
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32: {
        std::optional<int64_t> n = ReadInteger(path, v, std::numeric_limits<int32_t>::min(),
                                               std::numeric_limits<int32_t>::max());
        if (n) r->SetInt32(msg, f, static_cast<int32_t>(*n));
        return;
      }
      case pb::FieldDescriptor::CPPTYPE_UINT64: {
        static const std::regex kUnsigned("\\+?[0-9]+");
        if (!IsPlain(v) || !std::regex_match(v.Scalar(), kUnsigned)) {
          return TypeError(path, "a non-negative integer", v);
        }
        std::string digits = v.Scalar()[0] == '+' ? v.Scalar().substr(1) : v.Scalar();
        uint64_t n = 0;
        auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
        if (ec != std::errc() || end != digits.data() + digits.size()) {
          Error(value_positions[path], path,
                absl::StrCat("must be at most ", std::numeric_limits<uint64_t>::max(), ", got ",
                             Describe(v)));
          bad.insert(path);
          return;
        }
        r->SetUInt64(msg, f, n);
        return;
      }
      case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
        std::optional<double> d = ReadNumber(path, v);
        if (d) r->SetDouble(msg, f, *d);
        return;
      }
      case pb::FieldDescriptor::CPPTYPE_BOOL: {
        std::string s = absl::AsciiStrToLower(v.IsScalar() ? v.Scalar() : "");
        if (!IsPlain(v) || (s != "true" && s != "false")) {
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
        auto choices = EnumChoices(f->enum_type());
        std::vector<std::string> names;
        for (const auto& c : choices) names.push_back(c.first);
        std::string want = absl::StrCat("one of ", absl::StrJoin(names, ", "));
        if (!v.IsScalar()) return TypeError(path, want, v);
        for (const auto& [name, number] : choices) {
          if (v.Scalar() == name) {
            r->SetEnumValue(msg, f, number);
            return;
          }
        }
        std::string msg_text = absl::StrCat("must be ", want, ", got '", Truncate(v.Scalar()), "'");
        if (auto near = NearestName(v.Scalar(), names)) {
          absl::StrAppend(&msg_text, "; did you mean '", *near, "'?");
        }
        Error(value_positions[path], path, msg_text);
        bad.insert(path);
        return;
      }
      default:
        Error(value_positions[path], path, "has a type this reader does not know (a bug in moe)");
        bad.insert(path);
        return;
    }
  }

  std::optional<int64_t> ReadInteger(const std::string& path, const YAML::Node& v, int64_t lo,
                                     int64_t hi) {
    static const std::regex kInteger("[-+]?[0-9]+");
    if (!IsPlain(v) || !std::regex_match(v.Scalar(), kInteger)) {
      TypeError(path, "an integer", v);
      return std::nullopt;
    }
    std::string digits = v.Scalar()[0] == '+' ? v.Scalar().substr(1) : v.Scalar();
    int64_t n = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
    if (ec != std::errc() || end != digits.data() + digits.size() || n < lo || n > hi) {
      Error(value_positions[path], path,
            absl::StrCat("must be an integer between ", lo, " and ", hi, ", got ", Describe(v)));
      bad.insert(path);
      return std::nullopt;
    }
    return n;
  }

  std::optional<double> ReadNumber(const std::string& path, const YAML::Node& v) {
    static const std::regex kNumber("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
    static const std::regex kNonFinite("[-+]?\\.(inf|Inf|INF|nan|NaN|NAN)");
    if (IsPlain(v) && std::regex_match(v.Scalar(), kNonFinite)) {
      Error(value_positions[path], path, absl::StrCat("must be a finite number, got ", v.Scalar()));
      bad.insert(path);
      return std::nullopt;
    }
    if (!IsPlain(v) || !std::regex_match(v.Scalar(), kNumber)) {
      TypeError(path, "a number", v);
      return std::nullopt;
    }
    double d = std::strtod(v.Scalar().c_str(), nullptr);
    if (!std::isfinite(d)) {
      Error(value_positions[path], path,
            absl::StrCat("is too large for a number, got ", v.Scalar()));
      bad.insert(path);
      return std::nullopt;
    }
    return d;
  }

  std::string file_;
  std::multimap<std::string, std::string> all_paths_;
};

// ---------------------------------------------------------------------------------------------
// Defaults for keys the file left out. A default derived from another key (n_kv_heads from
// n_heads, ...) is only computed from a usable value; otherwise the derived key is marked
// unusable too, so that one mistake gives one error.

void ApplyDefaults(JobSpec* s, const std::set<std::string>& present, std::set<std::string>* bad) {
  auto absent = [&](const char* path) { return present.count(path) == 0; };
  auto usable = [&](const char* path) { return !IsUnderAny(path, *bad); };
  v1::ModelSpec* m = s->mutable_model();
  v1::MoeSpec* moe = m->mutable_moe();
  v1::DataSpec* data = s->mutable_data();
  v1::TrainSpec* train = s->mutable_train();
  v1::ResourceSpec* res = s->mutable_resources();
  v1::CheckpointSpec* ckpt = s->mutable_checkpoint();

  if (absent("model.n_kv_heads")) {
    if (usable("model.n_heads") && m->n_heads() >= 1) {
      m->set_n_kv_heads(m->n_heads());
    } else {
      bad->insert("model.n_kv_heads");
    }
  }
  if (absent("model.tie_embeddings")) m->set_tie_embeddings(true);
  if (absent("model.moe.num_experts")) moe->set_num_experts(1);
  if (absent("model.moe.top_k")) moe->set_top_k(1);
  if (absent("model.moe.expert_hidden")) {
    if (usable("model.d_model") && m->d_model() >= 1 && m->d_model() <= kMaxDModel) {
      moe->set_expert_hidden(4 * m->d_model());
    } else {
      bad->insert("model.moe.expert_hidden");
    }
  }
  if (absent("model.moe.aux_loss_coef")) moe->set_aux_loss_coef(0.01);
  if (absent("model.moe.z_loss_coef")) moe->set_z_loss_coef(0.001);

  if (absent("data.tokenizer")) data->set_tokenizer(v1::TOKENIZER_CHAR);
  if (absent("data.val_fraction")) data->set_val_fraction(0.1);
  if (usable("data.tokenizer") && data->tokenizer() == v1::TOKENIZER_GPT2) {
    if (absent("model.vocab_size")) m->set_vocab_size(kGpt2PaddedVocab);
    if (absent("data.tokenizer_dir")) {
      if (usable("data.path") && !data->path().empty()) {
        data->set_tokenizer_dir(fs::path(data->path()).parent_path().string());
      } else {
        bad->insert("data.tokenizer_dir");
      }
    }
  }

  if (absent("train.grad_accum")) train->set_grad_accum(1);
  if (absent("train.lr")) train->set_lr(1e-3);
  if (absent("train.min_lr")) {
    if (usable("train.lr") && train->lr() > 0) {
      train->set_min_lr(train->lr() / 10);
    } else {
      bad->insert("train.min_lr");
    }
  }
  if (absent("train.warmup_steps")) {
    if (usable("train.steps") && train->steps() >= 1) {
      train->set_warmup_steps(std::min(100, train->steps()));
    } else {
      bad->insert("train.warmup_steps");
    }
  }
  if (absent("train.weight_decay")) train->set_weight_decay(0.1);
  if (absent("train.grad_clip")) train->set_grad_clip(1.0);
  if (absent("train.seed")) train->set_seed(1337);
  if (absent("train.eval_every")) train->set_eval_every(250);
  if (absent("train.eval_batches")) train->set_eval_batches(20);
  if (absent("train.log_every")) train->set_log_every(10);

  if (absent("resources.ranks")) res->set_ranks(1);
  if (absent("resources.device")) res->set_device(v1::DEVICE_CPU);
  // Mixed precision is what a GPU job wants; the CPU kernels are fp32.
  if (absent("train.precision")) {
    const bool cuda = usable("resources.device") && res->device() == v1::DEVICE_CUDA;
    train->set_precision(cuda ? v1::PRECISION_BF16 : v1::PRECISION_FP32);
  }
  if (absent("resources.launcher")) res->set_launcher(v1::LAUNCHER_LOCAL);
  if (usable("resources.launcher") && res->launcher() == v1::LAUNCHER_SLURM) {
    v1::SlurmSpec* slurm = res->mutable_slurm();
    if (absent("resources.slurm.nodes")) slurm->set_nodes(1);
    if (absent("resources.slurm.ranks_per_node")) {
      if (usable("resources.ranks") && usable("resources.slurm.nodes") && res->ranks() >= 1 &&
          slurm->nodes() >= 1) {
        slurm->set_ranks_per_node((res->ranks() + slurm->nodes() - 1) / slurm->nodes());
      } else {
        bad->insert("resources.slurm.ranks_per_node");
      }
    }
    if (absent("resources.slurm.gpus_per_node") && usable("resources.device")) {
      slurm->set_gpus_per_node(res->device() == v1::DEVICE_CUDA ? slurm->ranks_per_node() : 0);
    }
  }

  if (absent("checkpoint.every")) ckpt->set_every(1000);
  if (absent("checkpoint.keep")) ckpt->set_keep(3);
}

// Relative paths resolve against the job file's directory and are stored absolute, because
// the daemon that runs the job may have another working directory.
void ResolvePaths(JobSpec* s, const std::string& base_dir) {
  std::error_code ec;
  fs::path base = fs::absolute(base_dir.empty() ? fs::path(".") : fs::path(base_dir), ec);
  if (ec) base = fs::path(base_dir);
  auto resolve = [&](std::string* p) {
    if (p->empty() || (*p)[0] == '~' || fs::path(*p).is_absolute()) return;
    fs::path resolved = (base / *p).lexically_normal();
    if (!resolved.has_filename() && resolved.has_parent_path()) resolved = resolved.parent_path();
    *p = resolved.string();
  };
  resolve(s->mutable_data()->mutable_path());
  resolve(s->mutable_data()->mutable_tokenizer_dir());
  resolve(s->mutable_data()->mutable_cache_dir());
  resolve(s->mutable_checkpoint()->mutable_dir());
}

// ---------------------------------------------------------------------------------------------
// Range and relation rules: the one place each rule lives, for YAML files and gRPC specs alike.
// A rule that involves several fields runs only when each of them passed its own check, so one
// mistake is reported once.

class Checker {
 public:
  Checker(const JobSpec& spec, const std::set<std::string>& skip) : s_(spec), skip_(skip) {}

  std::vector<SpecError> Run() {
    CheckName();
    CheckModel();
    CheckData();
    CheckTrain();
    CheckResources();
    CheckCheckpoint();
    AtLeast("max_restarts", s_.max_restarts(), 0);
    CheckRelations();
    return std::move(errors_);
  }

 private:
  bool Ok(const std::string& path) const {
    return !IsUnderAny(path, skip_) && !failed_.count(path);
  }

  void Fail(const std::string& path, std::string message) {
    failed_.insert(path);
    if (!IsUnderAny(path, skip_)) errors_.push_back(SpecError{"", 0, 0, path, std::move(message)});
  }

  bool Between(const std::string& path, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) {
      Fail(path, absl::StrCat("must be between ", lo, " and ", hi, ", got ", v));
    }
    return Ok(path);
  }
  bool AtLeast(const std::string& path, int64_t v, int64_t lo) {
    if (v < lo) Fail(path, absl::StrCat("must be at least ", lo, ", got ", v));
    return Ok(path);
  }
  bool NonNegative(const std::string& path, double v) {
    if (!(v >= 0) || !std::isfinite(v)) {
      Fail(path, absl::StrCat("must be at least 0, got ", FormatDouble(v)));
    }
    return Ok(path);
  }
  template <typename E>
  bool Chosen(const std::string& path, E value, const pb::EnumDescriptor* desc) {
    if (value == 0 || desc->FindValueByNumber(value) == nullptr) {
      std::vector<std::string> names;
      for (const auto& c : EnumChoices(desc)) names.push_back(c.first);
      Fail(path, absl::StrCat("must be one of ", absl::StrJoin(names, ", "), ", got ",
                              EnumName(desc, value)));
    }
    return Ok(path);
  }
  // Paths reach here absolute: ParseJobSpec resolves relative ones, a gRPC client must too.
  bool AbsolutePath(const std::string& path, const std::string& value) {
    if (!value.empty() && value[0] == '~') {
      Fail(path, absl::StrCat("'~' is not expanded; write the full path, got ", value));
    } else if (!value.empty() && !fs::path(value).is_absolute()) {
      Fail(path, absl::StrCat("must be an absolute path (moectl resolves relative paths against "
                              "the job file's directory), got ",
                              value));
    }
    return Ok(path);
  }
  // An optional directory the worker creates: fine when absent, wrong when it is a file.
  void DirectoryOrAbsent(const std::string& path, const std::string& value) {
    if (value.empty() || !AbsolutePath(path, value)) return;
    std::error_code ec;
    if (fs::exists(value, ec) && !fs::is_directory(value, ec)) {
      Fail(path, absl::StrCat(value, " exists and is not a directory; give a directory"));
    }
  }

  void CheckName() {
    static const std::regex kName("[a-z0-9-]{1,63}");
    if (!std::regex_match(s_.name(), kName)) {
      Fail("name", absl::StrCat("must be 1 to 63 characters from a-z, 0-9 and '-', got '",
                                Truncate(s_.name()), "'"));
    }
  }

  void CheckModel() {
    const v1::ModelSpec& m = s_.model();
    Between("model.d_model", m.d_model(), 1, kMaxDModel);
    Between("model.n_layers", m.n_layers(), 1, kMaxLayers);
    Between("model.n_heads", m.n_heads(), 1, kMaxDModel);
    Between("model.n_kv_heads", m.n_kv_heads(), 1, kMaxDModel);
    Between("model.seq_len", m.seq_len(), 1, kMaxSeqLen);
    Between("model.vocab_size", m.vocab_size(), 0, kMaxVocab);
    if (!(m.dropout() >= 0 && m.dropout() < 1)) {
      Fail("model.dropout",
           absl::StrCat("must be at least 0 and less than 1, got ", FormatDouble(m.dropout())));
    }
    const v1::MoeSpec& e = m.moe();
    Between("model.moe.num_experts", e.num_experts(), 1, kMaxExperts);
    AtLeast("model.moe.top_k", e.top_k(), 1);
    Between("model.moe.expert_hidden", e.expert_hidden(), 1, kMaxExpertHidden);
    NonNegative("model.moe.capacity_factor", e.capacity_factor());
    NonNegative("model.moe.aux_loss_coef", e.aux_loss_coef());
    NonNegative("model.moe.z_loss_coef", e.z_loss_coef());
  }

  void CheckData() {
    const v1::DataSpec& d = s_.data();
    if (d.path().empty()) {
      Fail("data.path", "must not be empty; give the training text or token shards");
    }
    AbsolutePath("data.path", d.path());
    Chosen("data.tokenizer", d.tokenizer(), v1::Tokenizer_descriptor());
    if (!(d.val_fraction() > 0 && d.val_fraction() < 1)) {
      Fail("data.val_fraction", absl::StrCat("must be greater than 0 and less than 1, got ",
                                             FormatDouble(d.val_fraction())));
    }
    AbsolutePath("data.tokenizer_dir", d.tokenizer_dir());
    DirectoryOrAbsent("data.cache_dir", d.cache_dir());
  }

  void CheckTrain() {
    const v1::TrainSpec& t = s_.train();
    AtLeast("train.steps", t.steps(), 1);
    AtLeast("train.batch_size", t.batch_size(), 1);
    AtLeast("train.grad_accum", t.grad_accum(), 1);
    if (!(t.lr() > 0) || !std::isfinite(t.lr())) {
      Fail("train.lr", absl::StrCat("must be greater than 0, got ", FormatDouble(t.lr())));
    }
    NonNegative("train.min_lr", t.min_lr());
    AtLeast("train.warmup_steps", t.warmup_steps(), 0);
    NonNegative("train.weight_decay", t.weight_decay());
    NonNegative("train.grad_clip", t.grad_clip());
    Chosen("train.precision", t.precision(), v1::Precision_descriptor());
    AtLeast("train.eval_every", t.eval_every(), 1);
    AtLeast("train.eval_batches", t.eval_batches(), 1);
    AtLeast("train.log_every", t.log_every(), 1);
  }

  void CheckResources() {
    const v1::ResourceSpec& r = s_.resources();
    Between("resources.ranks", r.ranks(), 1, kMaxRanks);
    Chosen("resources.device", r.device(), v1::Device_descriptor());
    Chosen("resources.launcher", r.launcher(), v1::Launcher_descriptor());
    AtLeast("resources.threads_per_rank", r.threads_per_rank(), 0);
    if (!Ok("resources.launcher")) return;
    const v1::SlurmSpec& sl = r.slurm();
    if (r.launcher() != v1::LAUNCHER_SLURM) {
      if (sl.ByteSizeLong() != 0) {
        Fail("resources.slurm", absl::StrCat("is only used with launcher slurm (launcher is ",
                                             EnumName(v1::Launcher_descriptor(), r.launcher()),
                                             "); remove it or set resources.launcher: slurm"));
      }
      return;
    }
    bool partition_in_args = false;
    for (int i = 0; i < sl.extra_sbatch_args_size(); ++i) {
      const std::string& arg = sl.extra_sbatch_args(i);
      std::string path = absl::StrCat("resources.slurm.extra_sbatch_args[", i, "]");
      if (arg.empty() || arg[0] != '-' || arg.find_first_of("\n\r") != std::string::npos) {
        Fail(path,
             absl::StrCat("must be one sbatch option starting with '-', e.g. --qos=high, got '",
                          Truncate(arg), "'"));
      }
      if (arg == "-p" || absl::StartsWith(arg, "--partition")) partition_in_args = true;
    }
    if (sl.partition().empty() && !partition_in_args) {
      Fail("resources.slurm.partition",
           "is required with launcher slurm (or pass --partition=... in "
           "resources.slurm.extra_sbatch_args); see sinfo for the partitions");
    } else if (sl.partition().find_first_of(" \t\n") != std::string::npos) {
      Fail("resources.slurm.partition",
           absl::StrCat("must not contain spaces, got '", sl.partition(), "'"));
    }
    AtLeast("resources.slurm.nodes", sl.nodes(), 1);
    AtLeast("resources.slurm.ranks_per_node", sl.ranks_per_node(), 1);
    AtLeast("resources.slurm.gpus_per_node", sl.gpus_per_node(), 0);
    static const std::regex kTime(
        "[0-9]+(:[0-9]{1,2}){0,2}|[0-9]+-[0-9]{1,2}(:[0-9]{1,2}){0,2}|UNLIMITED|INFINITE");
    if (!sl.time_limit().empty() && !std::regex_match(sl.time_limit(), kTime)) {
      Fail("resources.slurm.time_limit",
           absl::StrCat("must be a Slurm time (MM, HH:MM:SS, D-HH, D-HH:MM:SS), got '",
                        Truncate(sl.time_limit()), "'"));
    }
    if (sl.account().find_first_of(" \t\n") != std::string::npos) {
      Fail("resources.slurm.account",
           absl::StrCat("must not contain spaces, got '", sl.account(), "'"));
    }
  }

  void CheckCheckpoint() {
    DirectoryOrAbsent("checkpoint.dir", s_.checkpoint().dir());
    AtLeast("checkpoint.every", s_.checkpoint().every(), 0);
    AtLeast("checkpoint.keep", s_.checkpoint().keep(), 1);
  }

  void CheckRelations() {
    const v1::ModelSpec& m = s_.model();
    const v1::MoeSpec& e = m.moe();
    const v1::TrainSpec& t = s_.train();
    const v1::ResourceSpec& r = s_.resources();
    const v1::DataSpec& d = s_.data();

    if (Ok("model.d_model") && Ok("model.n_heads")) {
      if (m.d_model() % m.n_heads() != 0) {
        Fail("model.d_model",
             absl::StrCat("must be a multiple of n_heads (", m.n_heads(), "), got ", m.d_model()));
      } else if ((m.d_model() / m.n_heads()) % 2 != 0) {
        Fail("model.n_heads",
             absl::StrCat("must leave an even head size d_model / n_heads for RoPE pairs, got ",
                          m.d_model(), " / ", m.n_heads(), " = ", m.d_model() / m.n_heads()));
      }
    }
    if (Ok("model.n_heads") && Ok("model.n_kv_heads") &&
        (m.n_kv_heads() > m.n_heads() || m.n_heads() % m.n_kv_heads() != 0)) {
      Fail("model.n_kv_heads",
           absl::StrCat("must divide n_heads (", m.n_heads(), "), got ", m.n_kv_heads()));
    }
    if (Ok("model.moe.num_experts") && Ok("model.moe.top_k") && e.top_k() > e.num_experts()) {
      Fail("model.moe.top_k", absl::StrCat("must be between 1 and num_experts (", e.num_experts(),
                                           "), got ", e.top_k()));
    }
    if (Ok("model.moe.num_experts") && Ok("resources.ranks") && e.num_experts() > 1 &&
        e.num_experts() % r.ranks() != 0) {
      Fail("resources.ranks",
           absl::StrCat("must divide model.moe.num_experts (", e.num_experts(),
                        ") so that every rank holds the same number of experts, got ", r.ranks()));
    }
    if (Ok("train.batch_size") && Ok("resources.ranks") && Ok("train.grad_accum") &&
        t.batch_size() % (static_cast<int64_t>(r.ranks()) * t.grad_accum()) != 0) {
      Fail("train.batch_size",
           absl::StrCat("must be a multiple of resources.ranks * train.grad_accum (", r.ranks(),
                        " * ", t.grad_accum(), " = ",
                        static_cast<int64_t>(r.ranks()) * t.grad_accum(), "), got ",
                        t.batch_size()));
    }
    if (Ok("train.lr") && Ok("train.min_lr") && t.min_lr() > t.lr()) {
      Fail("train.min_lr", absl::StrCat("must be between 0 and train.lr (", FormatDouble(t.lr()),
                                        "), got ", FormatDouble(t.min_lr())));
    }
    if (Ok("train.steps") && Ok("train.warmup_steps") && t.warmup_steps() > t.steps()) {
      Fail("train.warmup_steps", absl::StrCat("must be between 0 and train.steps (", t.steps(),
                                              "), got ", t.warmup_steps()));
    }
    if (Ok("train.precision") && Ok("resources.device") && t.precision() == v1::PRECISION_BF16 &&
        r.device() != v1::DEVICE_CUDA) {
      Fail("train.precision",
           "bf16 needs resources.device cuda (the CPU kernels compute in fp32); use fp32 on cpu");
    }
    if (Ok("train.precision") && Ok("resources.device") && Ok("resources.ranks") &&
        t.precision() == v1::PRECISION_FP32 && r.device() == v1::DEVICE_CUDA && r.ranks() > 1) {
      Fail("train.precision",
           absl::StrCat("fp32 runs on one GPU only; with resources.ranks ", r.ranks(),
                        " on cuda use bf16 (the multi-GPU expert exchange is bf16), or ranks: 1"));
    }
    if (r.launcher() == v1::LAUNCHER_SLURM && Ok("resources.launcher") && Ok("resources.ranks")) {
      const v1::SlurmSpec& sl = r.slurm();
      if (Ok("resources.slurm.nodes") && Ok("resources.slurm.ranks_per_node") &&
          static_cast<int64_t>(sl.nodes()) * sl.ranks_per_node() != r.ranks()) {
        Fail("resources.slurm.ranks_per_node",
             absl::StrCat("nodes (", sl.nodes(), ") * ranks_per_node (", sl.ranks_per_node(),
                          ") must equal resources.ranks (", r.ranks(), ")"));
      }
      if (Ok("resources.device") && r.device() == v1::DEVICE_CUDA &&
          Ok("resources.slurm.gpus_per_node") && Ok("resources.slurm.ranks_per_node") &&
          sl.gpus_per_node() < sl.ranks_per_node()) {
        Fail("resources.slurm.gpus_per_node",
             absl::StrCat("must be at least ranks_per_node (", sl.ranks_per_node(),
                          ") with device cuda (one GPU per rank), got ", sl.gpus_per_node()));
      }
    }
    if (Ok("data.tokenizer") && Ok("model.vocab_size")) CheckVocab();
    if (Ok("data.tokenizer") && Ok("data.path") && !d.path().empty()) CheckDataPath();
    if (Ok("data.tokenizer") && Ok("data.tokenizer_dir")) CheckTokenizerDir();
  }

  void CheckVocab() {
    const int v = s_.model().vocab_size();
    switch (s_.data().tokenizer()) {
      case v1::TOKENIZER_GPT2:
        if (v < kGpt2Vocab) {
          Fail("model.vocab_size",
               absl::StrCat("must be at least ", kGpt2Vocab, " for tokenizer gpt2 (",
                            kGpt2PaddedVocab, " is the usual padded size), got ", v));
        }
        break;
      case v1::TOKENIZER_PRETOKENIZED:
        if (v == 0) {
          Fail("model.vocab_size",
               "is required with tokenizer pretokenized: the number of token ids the shards use");
        }
        break;
      default:  // char: 0 means "the number of byte values in the text"
        break;
    }
  }

  void CheckDataPath() {
    const std::string& p = s_.data().path();
    std::error_code ec;
    if (s_.data().tokenizer() == v1::TOKENIZER_PRETOKENIZED) {
      if (p.find_first_of("*?[") != std::string::npos) {
        glob_t g{};
        int rc = ::glob(p.c_str(), 0, nullptr, &g);
        size_t bins = 0;
        for (size_t i = 0; rc == 0 && i < g.gl_pathc; ++i) {
          if (absl::EndsWith(g.gl_pathv[i], ".bin") && fs::is_regular_file(g.gl_pathv[i], ec)) {
            ++bins;
          }
        }
        globfree(&g);
        if (bins == 0) Fail("data.path", absl::StrCat("the pattern ", p, " matches no .bin shard"));
        return;
      }
      if (fs::is_directory(p, ec)) {
        size_t bins = 0;
        for (const auto& entry : fs::directory_iterator(p, ec)) {
          if (entry.path().extension() == ".bin" && entry.is_regular_file(ec)) ++bins;
        }
        if (bins == 0) Fail("data.path", absl::StrCat("the directory ", p, " holds no .bin shard"));
        return;
      }
      if (!fs::exists(p, ec)) {
        Fail("data.path", absl::StrCat(p,
                                       " does not exist; give a .bin shard, a directory of them "
                                       "or a glob such as shards/*.bin"));
      } else if (!fs::is_regular_file(p, ec) || fs::path(p).extension() != ".bin") {
        Fail("data.path", absl::StrCat(p,
                                       " is not a .bin token shard (tokenizer pretokenized); "
                                       "for a text file use tokenizer char or gpt2"));
      } else if (::access(p.c_str(), R_OK) != 0) {
        Fail("data.path", absl::StrCat(p, " is not readable; check its permissions"));
      }
      return;
    }
    std::string tokenizer = EnumName(v1::Tokenizer_descriptor(), s_.data().tokenizer());
    if (!fs::exists(p, ec)) {
      Fail("data.path", absl::StrCat(p, " does not exist; give the training text file"));
    } else if (!fs::is_regular_file(p, ec)) {
      Fail("data.path",
           absl::StrCat(p, " is not a regular file; tokenizer ", tokenizer,
                        " reads one text file (use pretokenized for shard directories)"));
    } else if (::access(p.c_str(), R_OK) != 0) {
      Fail("data.path", absl::StrCat(p, " is not readable; check its permissions"));
    } else if (fs::file_size(p, ec) == 0) {
      Fail("data.path", absl::StrCat(p, " is empty; give a text file to train on"));
    }
  }

  void CheckTokenizerDir() {
    const std::string& dir = s_.data().tokenizer_dir();
    if (s_.data().tokenizer() != v1::TOKENIZER_GPT2) {
      if (!dir.empty()) {
        Fail("data.tokenizer_dir",
             "is only used with tokenizer gpt2; remove it or set data.tokenizer: gpt2");
      }
      return;
    }
    if (dir.empty()) {
      Fail("data.tokenizer_dir",
           "is required with tokenizer gpt2: the directory holding "
           "encoder.json and vocab.bpe");
      return;
    }
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      Fail("data.tokenizer_dir", absl::StrCat(dir,
                                              " is not a directory; give the directory holding "
                                              "encoder.json and vocab.bpe (GPT-2's BPE files)"));
      return;
    }
    std::vector<std::string> missing;
    for (const char* name : {"encoder.json", "vocab.bpe"}) {
      fs::path f = fs::path(dir) / name;
      if (!fs::is_regular_file(f, ec) || ::access(f.c_str(), R_OK) != 0) missing.push_back(name);
    }
    if (!missing.empty()) {
      Fail("data.tokenizer_dir",
           absl::StrCat(dir, " lacks ", absl::StrJoin(missing, " and "),
                        "; tokenizer gpt2 needs encoder.json and vocab.bpe there (set "
                        "data.tokenizer_dir to where they are)"));
    }
  }

  const JobSpec& s_;
  const std::set<std::string>& skip_;
  std::set<std::string> failed_;
  std::vector<SpecError> errors_;
};

ParsedSpec SingleError(const std::string& file, Pos pos, std::string message) {
  ParsedSpec out;
  out.errors.push_back(SpecError{file, pos.line, pos.column, "", std::move(message)});
  return out;
}

ParsedSpec ParseChecked(const std::string& yaml_text, const std::string& file_name,
                        const std::string& base_dir) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(yaml_text);
  } catch (const YAML::DeepRecursion& e) {
    return SingleError(file_name, PosOf(e.mark),
                       absl::StrCat("invalid YAML: nested too deeply (", e.depth(), " levels)"));
  } catch (const YAML::ParserException& e) {
    return SingleError(file_name, PosOf(e.mark), absl::StrCat("invalid YAML: ", e.msg));
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

  ResolvePaths(&out.spec, base_dir);
  ApplyDefaults(&out.spec, reader.present, &reader.bad);

  // The same rules as a gRPC spec; each error goes back to where its key (or the nearest
  // enclosing key the file has) is written.
  std::vector<SpecError> errors = std::move(reader.errors);
  for (SpecError& e : Checker(out.spec, reader.bad).Run()) {
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
    errors.push_back(std::move(e));
  }
  std::stable_sort(errors.begin(), errors.end(), [](const SpecError& a, const SpecError& b) {
    return std::make_pair(a.line, a.column) < std::make_pair(b.line, b.column);
  });
  out.errors = std::move(errors);
  return out;
}

}  // namespace

std::string SpecError::ToString() const {
  std::string out;
  if (!file.empty()) {
    out = line > 0 ? absl::StrCat(file, ":", line, ":", column, ": ") : absl::StrCat(file, ": ");
  }
  if (!field.empty()) absl::StrAppend(&out, field, ": ");
  absl::StrAppend(&out, message);
  return out;
}

ParsedSpec ParseJobSpec(const std::string& yaml_text, const std::string& file_name,
                        const std::string& base_dir) {
  if (yaml_text.size() > kMaxJobFileBytes) {
    return SingleError(file_name, {},
                       absl::StrCat("is too large for a job file (", yaml_text.size(),
                                    " bytes, the limit is ", kMaxJobFileBytes, ")"));
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

ParsedSpec LoadJobSpecFile(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
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
    return SingleError(path, {},
                       absl::StrCat("is too large for a job file (", size, " bytes, the limit is ",
                                    kMaxJobFileBytes, ")"));
  }
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return SingleError(path, {}, std::string(text.status().message()));
  std::string base_dir = fs::path(path).parent_path().string();
  return ParseJobSpec(*text, path, base_dir.empty() ? "." : base_dir);
}

std::vector<SpecError> ValidateJobSpec(const moe::v1::JobSpec& spec) {
  static const std::set<std::string> kNothingSkipped;
  return Checker(spec, kNothingSkipped).Run();
}

std::string FormatSpecErrors(const std::vector<SpecError>& errors) {
  std::vector<std::string> lines;
  lines.reserve(errors.size());
  for (const SpecError& e : errors) lines.push_back(e.ToString());
  return absl::StrJoin(lines, "\n");
}

absl::StatusOr<moe::v1::JobSpec> LoadJobSpec(const std::string& path) {
  ParsedSpec parsed = LoadJobSpecFile(path);
  if (!parsed.ok()) return absl::InvalidArgumentError(FormatSpecErrors(parsed.errors));
  return std::move(parsed.spec);
}

}  // namespace moe
