// The data checks of the job-spec validator (job_spec_checks.cc calls CheckDataFiles): data.path
// exists and is what the tokenizer reads, a text or the shards hold enough tokens for one sequence
// in each split, the shards' headers are whole, data.tokenizer_dir holds GPT-2's BPE, and
// model.vocab_size holds the char tokenizer's or the BPE's token ids; model.init_from holds the
// files the worker reads (a Hugging Face model's config.json and safetensors, or a checkpoint).
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/job_spec_internal.h"
#include "common/json_object.h"
#include "common/number_text.h"
#include "common/token_shards.h"
#include "common/tokenizer.h"
#include "google/protobuf/struct.pb.h"

namespace moe::job_spec_internal {
namespace {

namespace fs = std::filesystem;
using moe::v1::JobSpec;
namespace v1 = moe::v1;

constexpr uintmax_t kMaxBpeFileBytes = uintmax_t{64} << 20;

class DataChecker {
 public:
  DataChecker(const JobSpec& spec, const std::function<bool(const std::string&)>& ok,
              const std::function<void(const std::string&, std::string)>& fail)
      : s_(spec), ok_(ok), fail_(fail) {}

  void Run() {
    if (ok_("data.tokenizer") && ok_("data.path") && !s_.data().path().empty()) CheckDataPath();
    if (ok_("data.tokenizer") && ok_("data.tokenizer_dir")) CheckTokenizerDir();
    if (ok_("model.init_from") && !s_.model().init_from().empty()) CheckInitFromFiles();
  }

 private:
  void CheckDataPath() {
    const std::string& p = s_.data().path();
    std::error_code ec;
    if (s_.data().tokenizer() == v1::TOKENIZER_PRETOKENIZED) {
      if (p.find_first_of("*?[") != std::string::npos) {
        // Wildcards in many directories would walk the filesystem here (and in moed's submit).
        if (const int dirs = WildcardDirectories(p); dirs > kMaxWildcardDirectories) {
          fail_("data.path", absl::StrCat("the pattern ", p, " has wildcards in ", dirs,
                                         " directories; at most ", kMaxWildcardDirectories,
                                         " directory of a pattern may hold them (the file name may too), "
                                         "e.g. shards/*/train_*.bin"));
          return;
        }
        // The worker's own list (common/token_shards.h), read once: any regular file the pattern
        // matches is a shard, and one of them at least must be a .bin.
        absl::StatusOr<std::vector<std::string>> files = ShardFiles(p);
        const bool any_bin = files.ok() && std::any_of(files->begin(), files->end(), [](const std::string& f) {
                               return absl::EndsWith(f, ".bin");
                             });
        if (!any_bin) {
          fail_("data.path", absl::StrCat("the pattern ", p, " matches no .bin shard"));
        } else {
          CheckShards(p, *files);
        }
        return;
      }
      if (std::string why; LookUpPath(p, &why) == PathLookup::kUnreachable) {
        fail_("data.path", absl::StrCat(p, " ", why, "; give a path this user can read, or let it search the "
                                       "directories on the way (chmod)"));
        return;
      }
      if (fs::is_directory(p, ec)) {
        absl::StatusOr<std::vector<std::string>> files = ShardFiles(p);  // its regular *.bin files
        if (!files.ok()) {
          fail_("data.path", absl::StrCat("the directory ", p, " holds no .bin shard"));
        } else {
          CheckShards(p, *files);
        }
        return;
      }
      if (!fs::exists(p, ec)) {
        fail_("data.path", absl::StrCat(p,
                                       " does not exist; give a .bin shard, a directory of them "
                                       "or a glob such as shards/*.bin"));
      } else if (!fs::is_regular_file(p, ec) || fs::path(p).extension() != ".bin") {
        fail_("data.path", absl::StrCat(p,
                                       " is not a .bin token shard (tokenizer pretokenized); "
                                       "for a text file use tokenizer char or gpt2"));
      } else if (::access(p.c_str(), R_OK) != 0) {
        fail_("data.path", absl::StrCat(p, " is not readable; check its permissions"));
      } else {
        CheckShards(p, {p});
      }
      return;
    }
    std::string tokenizer = EnumName(v1::Tokenizer_descriptor(), s_.data().tokenizer());
    std::string why;
    if (const PathLookup found = LookUpPath(p, &why); found == PathLookup::kUnreachable) {
      fail_("data.path", absl::StrCat(p, " ", why, "; give a path this user can read, or let it search the "
                                     "directories on the way (chmod)"));
    } else if (found == PathLookup::kMissing) {
      fail_("data.path", absl::StrCat(p, " does not exist; give the training text file"));
    } else if (!fs::is_regular_file(p, ec)) {
      fail_("data.path",
           absl::StrCat(p, " is not a regular file; tokenizer ", tokenizer,
                        " reads one text file (use pretokenized for shard directories)"));
    } else if (::access(p.c_str(), R_OK) != 0) {
      fail_("data.path", absl::StrCat(p, " is not readable; check its permissions"));
    } else if (fs::file_size(p, ec) == 0) {
      fail_("data.path", absl::StrCat(p, " is empty; give a text file to train on"));
    } else if (!ec) {
      CheckTextIsLongEnough(p, fs::file_size(p, ec));
      if (s_.data().tokenizer() == v1::TOKENIZER_CHAR) CheckCharVocab(p);
    }
  }

  // The char tokenizer's ids are the text's distinct byte values; a model.vocab_size below their
  // number is refused by the worker once the job starts ("the data has N token ids"), so here.
  // The text is read only when the vocabulary is given and below 256, which it could be short of.
  void CheckCharVocab(const std::string& p) {
    const int v = s_.model().vocab_size();
    if (!ok_("model.vocab_size") || v < 1 || v >= 256) return;
    std::FILE* f = std::fopen(p.c_str(), "rb");
    if (f == nullptr) return;  // readable a moment ago; the worker will say why not
    bool seen[256] = {};
    int distinct = 0;
    std::vector<unsigned char> buf(1 << 20);
    // At most the first 256 MiB (moed runs this at submit; the worker checks the rest when it
    // tokenizes the whole text).
    size_t read = 0;
    for (size_t n; distinct < 256 && read < (size_t{256} << 20) && (n = std::fread(buf.data(), 1, buf.size(), f)) > 0;
         read += n) {
      for (size_t i = 0; i < n; ++i) {
        if (!seen[buf[i]]) seen[buf[i]] = true, ++distinct;
      }
    }
    const bool whole = distinct == 256 || std::feof(f);
    std::fclose(f);
    if (distinct <= v) return;
    fail_("model.vocab_size",
          absl::StrCat("is ", v, ", but the char tokenizer makes ", whole ? "" : "at least ", distinct,
                       " token ids of ", p, whole ? "" : " (in its first 256 MiB)",
                       " (one per distinct byte value); raise model.vocab_size to at least ", distinct,
                       ", or remove it to use the text's own"));
  }

  // GPT-2's BPE (or another in its format) has one token id per encoder.json entry; the worker
  // refuses a model.vocab_size below their number.
  void CheckBpeVocab(const std::string& dir, const Tokenizer& bpe) {
    const int v = s_.model().vocab_size();
    if (!ok_("model.vocab_size") || v < 1) return;
    const int64_t tokens = bpe.vocab_size();
    if (tokens <= v) return;
    fail_("model.vocab_size",
          absl::StrCat("is ", v, ", but the BPE in ", dir, " has ", tokens,
                       " tokens (encoder.json); raise model.vocab_size to at least ", tokens,
                       " (a multiple of 64 is the usual padding), or remove it"));
  }

  // The shards' token ids against model.vocab_size (the worker refuses an id past it once the job
  // starts). The shards in order, at most their first 256 MiB of tokens (moed runs this at
  // submit; the worker checks every token when it maps them). `extents`: the files' headers,
  // read by CheckShards, none damaged.
  void CheckShardIds(const std::vector<std::string>& files, const std::vector<ShardExtent>& extents) {
    const int v = s_.model().vocab_size();
    if (!ok_("model.vocab_size") || v < 1 || v >= 65536) return;
    constexpr size_t kMaxTokens = size_t{128} << 20;  // 256 MiB of uint16
    std::vector<uint16_t> buf(size_t{1} << 19);
    size_t scanned = 0;
    int max_id = -1;
    std::string first_file;
    size_t first_index = 0;
    int first_id = -1;
    for (size_t s = 0; s < files.size() && scanned < kMaxTokens; ++s) {
      const std::string& f = files[s];
      std::FILE* in = std::fopen(f.c_str(), "rb");
      if (in == nullptr) continue;  // the worker says why
      if (std::fseek(in, static_cast<long>(extents[s].offset), SEEK_SET) != 0) {
        std::fclose(in);
        continue;
      }
      size_t left = std::min(extents[s].tokens, kMaxTokens - scanned), index = 0;
      while (left > 0) {
        const size_t n = std::fread(buf.data(), sizeof(uint16_t), std::min(left, buf.size()), in);
        if (n == 0) break;
        for (size_t i = 0; i < n; ++i) {
          const int id = buf[i];
          max_id = std::max(max_id, id);
          if (id >= v && first_id < 0) first_file = f, first_index = index + i, first_id = id;
        }
        index += n;
        left -= n;
        scanned += n;
      }
      std::fclose(in);
    }
    if (first_id < 0) return;
    fail_("model.vocab_size",
          absl::StrCat("is ", v, ", but ", first_file, " holds token id ", first_id, " (its token ", first_index,
                       "); the largest id in the shards' first ", scanned, " tokens is ", max_id,
                       ": raise model.vocab_size to at least ", max_id + 1,
                       " (the vocabulary the shards were made with, e.g. 50304 for GPT-2's)"));
  }

  // Every shard's header (12 bytes and the file's size, not its tokens), as the worker reads them
  // (common/token_shards.h): a damaged shard, and a split shorter than one sequence, are refused
  // here rather than once the job runs.
  // `files`: data.path's shards (ShardFiles).
  void CheckShards(const std::string& p, const std::vector<std::string>& files) {
    std::vector<std::string> damaged;
    std::vector<ShardExtent> extents;  // each file's, in order, when none is damaged
    int64_t train = 0, val = 0;
    size_t val_files = 0;
    for (const std::string& f : files) {
      absl::StatusOr<ShardExtent> extent = ReadShardExtent(f);
      if (!extent.ok()) {
        damaged.emplace_back(extent.status().message());
        continue;
      }
      extents.push_back(*extent);
      const bool is_val = IsValShard(f, files.size());
      (is_val ? val : train) += static_cast<int64_t>(extent->tokens);
      val_files += is_val ? 1 : 0;
    }
    if (!damaged.empty()) {
      constexpr size_t kNamed = 3;
      std::string more;
      if (damaged.size() > kNamed) {
        more = absl::StrCat("; and ", damaged.size() - kNamed, " more damaged shard(s)");
        damaged.resize(kNamed);
      }
      fail_("data.path", absl::StrCat(absl::StrJoin(damaged, "; "), more));
      return;
    }
    if (val_files > 0 && train == 0) {
      fail_("data.path", absl::StrCat(p, ": every shard has \"val\" in its name, so there is no training split; "
                                      "add train shards"));
      return;
    }
    CheckShardIds(files, extents);
    const int64_t seq_len = s_.model().seq_len();
    const double vf = s_.data().val_fraction();
    if (!ok_("model.seq_len") || seq_len < 1) return;
    std::string how = absl::StrCat(" (", val_files, " shard(s) with \"val\" in the name)");
    if (val_files == 0) {
      if (!ok_("data.val_fraction")) return;
      const int64_t total = train;
      train = static_cast<int64_t>(TrainSplitTokens(static_cast<size_t>(total), vf));
      val = total - train;
      how = absl::StrCat(" (data.val_fraction ", Shortest(vf), " of ", total, " tokens)");
    }
    for (const auto& [name, tokens] : {std::pair<const char*, int64_t>{"train", train}, {"val", val}}) {
      if (tokens >= seq_len + 1) continue;
      const bool is_val = std::string(name) == "val";
      fail_("data.path",
            absl::StrCat(p, ": the ", name, " split", how, " holds ", tokens, " tokens, but sampling sequences of "
                         "model.seq_len = ", seq_len, " needs ", seq_len + 1, "; use more shards, a shorter seq_len",
                         is_val ? (val_files > 0 ? " or more val shards" : " or a larger data.val_fraction")
                                : (val_files > 0 ? " or more train shards" : " or a smaller data.val_fraction")));
      return;
    }
  }

  // A text of B bytes makes at most B tokens (char: one a byte; gpt2: a byte or more each), split
  // as the worker splits it. A split shorter than one sequence even so is refused here, where the
  // worker would find it only once the job runs; shorter splits after BPE are still its to find.
  void CheckTextIsLongEnough(const std::string& p, uintmax_t bytes) {
    const int64_t seq_len = s_.model().seq_len();
    const double vf = s_.data().val_fraction();
    if (!ok_("model.seq_len") || !ok_("data.val_fraction") || seq_len < 1) return;
    const auto n = static_cast<int64_t>(std::min<uintmax_t>(bytes, INT64_MAX / 2));
    const auto train = static_cast<int64_t>(TrainSplitTokens(static_cast<size_t>(n), vf));
    const int64_t val = n - train;
    for (const auto& [name, tokens] : {std::pair<const char*, int64_t>{"train", train}, {"val", val}}) {
      if (tokens >= seq_len + 1) continue;
      fail_("data.path",
           absl::StrCat(p, " has ", n, " bytes, so its ", name, " split (data.val_fraction ",
                        Shortest(vf), ") holds at most ", tokens,
                        " tokens, but sampling sequences of model.seq_len = ", seq_len, " needs ",
                        seq_len + 1, "; use more data, a shorter seq_len",
                        std::string(name) == "val" ? " or a larger data.val_fraction" : " or a smaller data.val_fraction"));
      return;
    }
  }

  void CheckTokenizerDir() {
    const std::string& dir = s_.data().tokenizer_dir();
    // pretokenized: optional, the BPE the shards were made with (for samples and exports).
    const bool pretokenized = s_.data().tokenizer() == v1::TOKENIZER_PRETOKENIZED;
    if (s_.data().tokenizer() != v1::TOKENIZER_GPT2 && !(pretokenized && !dir.empty())) {
      if (!dir.empty()) {
        fail_("data.tokenizer_dir",
             "is only used with tokenizer gpt2 or pretokenized (the BPE the shards were made "
             "with); remove it, or set data.tokenizer: gpt2 or pretokenized");
      }
      return;
    }
    if (dir.empty()) {
      fail_("data.tokenizer_dir",
           "is required with tokenizer gpt2: the directory holding "
           "encoder.json and vocab.bpe");
      return;
    }
    std::error_code ec;
    if (std::string why; LookUpPath(dir, &why) == PathLookup::kUnreachable) {
      fail_("data.tokenizer_dir", absl::StrCat(dir, " ", why, "; give a directory this user can read, or let it "
                                               "search the directories on the way (chmod)"));
      return;
    }
    if (!fs::is_directory(dir, ec)) {
      fail_("data.tokenizer_dir", absl::StrCat(dir,
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
      fail_("data.tokenizer_dir",
           absl::StrCat(dir, " lacks ", absl::StrJoin(missing, " and "),
                        "; tokenizer gpt2 needs encoder.json and vocab.bpe there (set "
                        "data.tokenizer_dir to where they are)"));
      return;
    }
    // GPT-2's files are at most a few MiB (65536 tokens at most); moed runs this at submit.
    for (const char* name : {"encoder.json", "vocab.bpe"}) {
      const uintmax_t bytes = fs::file_size(fs::path(dir) / name, ec);
      if (!ec && bytes > kMaxBpeFileBytes) {
        fail_("data.tokenizer_dir", absl::StrCat((fs::path(dir) / name).string(), " is ", bytes,
                                                 " bytes, more than a BPE of at most 65536 tokens has (GPT-2's "
                                                 "is about 1 MB); give the directory of GPT-2's BPE files"));
        return;
      }
    }
    // Loaded as the worker loads it when the job starts (common/tokenizer.h), so a file it would
    // refuse is refused here, with the file and what is wrong in it.
    absl::StatusOr<std::unique_ptr<Tokenizer>> bpe = LoadGpt2Tokenizer(dir);
    if (!bpe.ok()) {
      fail_("data.tokenizer_dir", std::string(bpe.status().message()));
      return;
    }
    if (!pretokenized) CheckBpeVocab(dir, **bpe);
  }


  // model.init_from, a directory (CheckJobSpec saw to that), as the worker tells its two kinds
  // apart (worker/interchange/hf_import.cc): with config.json a Hugging Face model, whose
  // config.json must be a JSON object and whose weights are model.safetensors or the shards that
  // model.safetensors.index.json names; without, one of our checkpoints (a MANIFEST, or
  // step_XXXXXXXX directories). Only presence and parsing: the shapes are the worker's to check.
  void CheckInitFromFiles() {
    const fs::path dir(s_.model().init_from());
    std::error_code ec;
    std::vector<std::string> safetensors;
    bool step_dirs = false;
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (absl::EndsWith(name, ".safetensors")) safetensors.push_back(name);
      if (absl::StartsWith(name, "step_") && e.is_directory(ec)) step_dirs = true;
    }
    std::sort(safetensors.begin(), safetensors.end());
    if (!fs::exists(dir / "config.json", ec)) {
      if (fs::exists(dir / "MANIFEST", ec) || step_dirs) return;
      fail_("model.init_from",
            safetensors.empty() && !fs::exists(dir / "model.safetensors.index.json", ec)
                ? absl::StrCat(dir.string(), " is neither a Hugging Face model directory (no config.json) nor ",
                               "one of our checkpoints (no MANIFEST, no step_XXXXXXXX directory); give the ",
                               "directory save_pretrained or moectl export wrote, or a job's checkpoint directory")
                : absl::StrCat(dir.string(), " has safetensors weights but no config.json, which a Hugging Face ",
                               "model directory needs beside them; copy the model's config.json there (",
                               "save_pretrained writes both)"));
      return;
    }
    const std::string config = (dir / "config.json").string();
    if (std::string why = JsonObjectProblem(config); !why.empty()) {
      fail_("model.init_from", absl::StrCat(config, " ", why, "; give the model's config.json as ",
                                            "save_pretrained wrote it"));
      return;
    }
    const std::string index = (dir / "model.safetensors.index.json").string();
    if (fs::exists(index, ec)) {
      google::protobuf::Struct doc;
      // The worker reads the index when there is one, model.safetensors or not.
      const std::string fix = absl::StrCat(
          "; give the index save_pretrained wrote",
          fs::is_regular_file(dir / "model.safetensors", ec) ? ", or remove it to read model.safetensors alone" : "");
      if (std::string why = JsonObjectProblem(index, &doc); !why.empty()) {
        fail_("model.init_from", absl::StrCat(index, " ", why, fix));
        return;
      }
      auto map = doc.fields().find("weight_map");
      if (map == doc.fields().end() || !map->second.has_struct_value() ||
          map->second.struct_value().fields().empty()) {
        fail_("model.init_from", absl::StrCat(index, " has no \"weight_map\" naming the shards ",
                                              "(tensor name -> file name)", fix));
        return;
      }
      std::set<std::string> missing;
      for (const auto& [tensor, file] : map->second.struct_value().fields()) {
        const std::string& f = file.string_value();
        if (!file.has_string_value() || f.empty() || absl::StrContains(f, "/")) {
          fail_("model.init_from", absl::StrCat(index, ": weight_map[\"", tensor,
                                                "\"] is not a file name in this directory (the shards sit ",
                                                "beside the index)", fix));
          return;
        }
        if (!fs::is_regular_file(dir / f, ec)) missing.insert(f);
      }
      if (!missing.empty()) {
        fail_("model.init_from", absl::StrCat(index, " names ", absl::StrJoin(missing, ", "),
                                              ", which ", missing.size() == 1 ? "is" : "are", " not in ",
                                              dir.string(), "; copy every shard of the model there"));
      }
      return;
    }
    if (fs::is_regular_file(dir / "model.safetensors", ec)) return;
    fail_("model.init_from",
          absl::StrCat(dir.string(), " has config.json but neither model.safetensors nor ",
                       "model.safetensors.index.json",
                       safetensors.empty() ? std::string(" (PyTorch .bin files are not read: save with "
                                                         "safe_serialization=True)")
                                           : absl::StrCat(" (it has ", safetensors.front(),
                                                          safetensors.size() > 1 ? " and more" : "",
                                                          ": shards need the index that names them)")));
  }

  // "" when the file holds a JSON object (into *doc when given), else what is wrong, e.g. "is not a
  // JSON object (it does not start with '{')" or "is not valid JSON (JSON error at byte 12: ...)".
  static std::string JsonObjectProblem(const std::string& path, google::protobuf::Struct* doc = nullptr) {
    std::error_code ec;
    const uintmax_t bytes = fs::file_size(path, ec);
    if (ec) return "is not a readable file";
    if (bytes > (uintmax_t{64} << 20)) return absl::StrCat("is ", bytes, " bytes, too large for a JSON file of metadata");
    absl::StatusOr<std::string> text = ReadFile(path);
    if (!text.ok()) return absl::StrCat("cannot be read (", text.status().message(), ")");
    const size_t first = text->find_first_not_of(" \t\r\n");
    if (first == std::string::npos) return "is empty, not a JSON object";
    if ((*text)[first] != '{') return "is not a JSON object (it does not start with '{')";
    google::protobuf::Struct local;
    if (absl::Status st = ParseJsonObject(*text, doc != nullptr ? doc : &local); !st.ok()) {
      return absl::StrCat("is not valid JSON (", st.message(), ")");
    }
    return "";
  }

  const JobSpec& s_;
  const std::function<bool(const std::string&)>& ok_;
  const std::function<void(const std::string&, std::string)>& fail_;
};

}  // namespace

void CheckDataFiles(const JobSpec& spec, const std::function<bool(const std::string&)>& ok,
                    const std::function<void(const std::string&, std::string)>& fail) {
  DataChecker(spec, ok, fail).Run();
}

std::vector<SpecError> TextDataWarnings(const JobSpec& spec) {
  const v1::Tokenizer tok = spec.data().tokenizer();
  const std::string& p = spec.data().path();
  if (tok == v1::TOKENIZER_PRETOKENIZED || p.empty()) return {};
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return {};
  // A NUL byte in the first 64 KiB: no text has one, token shards and binaries do.
  std::string why;
  if (std::FILE* f = std::fopen(p.c_str(), "rbe")) {
    std::vector<char> head(64 << 10);
    const size_t n = std::fread(head.data(), 1, head.size(), f);
    std::fclose(f);
    const auto nul = std::find(head.begin(), head.begin() + static_cast<std::ptrdiff_t>(n), '\0');
    if (nul != head.begin() + static_cast<std::ptrdiff_t>(n)) {
      why = absl::StrCat("holds a NUL byte at offset ", nul - head.begin());
    }
  }
  if (why.empty() && fs::path(p).extension() == ".bin") why = "is named like a token shard (.bin)";
  if (why.empty()) return {};
  SpecError e;
  e.field = "data.path";
  e.message = absl::StrCat(p, " ", why, ", which text does not: tokenizer ",
                           EnumName(v1::Tokenizer_descriptor(), tok),
                           " reads it as text. For token shards set data.tokenizer: pretokenized");
  return {std::move(e)};
}

}  // namespace moe::job_spec_internal
