// The data checks of the job-spec validator (job_spec_checks.cc calls CheckDataFiles): data.path
// exists and is what the tokenizer reads, a text or the shards hold enough tokens for one sequence
// in each split, the shards' headers are whole, and data.tokenizer_dir holds GPT-2's BPE.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/job_spec_internal.h"
#include "common/token_shards.h"

namespace moe::job_spec_internal {
namespace {

namespace fs = std::filesystem;
using moe::v1::JobSpec;
namespace v1 = moe::v1;

class DataChecker {
 public:
  DataChecker(const JobSpec& spec, const std::function<bool(const std::string&)>& ok,
              const std::function<void(const std::string&, std::string)>& fail)
      : s_(spec), ok_(ok), fail_(fail) {}

  void Run() {
    if (ok_("data.tokenizer") && ok_("data.path") && !s_.data().path().empty()) CheckDataPath();
    if (ok_("data.tokenizer") && ok_("data.tokenizer_dir")) CheckTokenizerDir();
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
    if (!fs::exists(p, ec)) {
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
    }
  }

  // Every shard's header (12 bytes and the file's size, not its tokens), as the worker reads them
  // (common/token_shards.h): a damaged shard, and a split shorter than one sequence, are refused
  // here rather than once the job runs.
  // `files`: data.path's shards (ShardFiles).
  void CheckShards(const std::string& p, const std::vector<std::string>& files) {
    std::vector<std::string> damaged;
    int64_t train = 0, val = 0;
    size_t val_files = 0;
    for (const std::string& f : files) {
      absl::StatusOr<ShardExtent> extent = ReadShardExtent(f);
      if (!extent.ok()) {
        damaged.emplace_back(extent.status().message());
        continue;
      }
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
    const int64_t seq_len = s_.model().seq_len();
    const double vf = s_.data().val_fraction();
    if (!ok_("model.seq_len") || seq_len < 1) return;
    std::string how = absl::StrCat(" (", val_files, " shard(s) with \"val\" in the name)");
    if (val_files == 0) {
      if (!ok_("data.val_fraction")) return;
      const int64_t total = train;
      train = static_cast<int64_t>(TrainSplitTokens(static_cast<size_t>(total), vf));
      val = total - train;
      how = absl::StrCat(" (data.val_fraction ", FormatDouble(vf), " of ", total, " tokens)");
    }
    for (const auto& [name, tokens] : {std::pair<const char*, int64_t>{"train", train}, {"val", val}}) {
      if (tokens >= seq_len + 1) continue;
      const bool is_val = std::string(name) == "val";
      fail_("data.path",
            absl::StrCat(p, ": the ", name, " split", how, " holds ", tokens, " tokens, but sampling sequences of "
                         "model.seq_len = ", seq_len, " needs ", seq_len + 1, "; use more shards, a shorter seq_len",
                         is_val ? (val_files > 0 ? " or more val shards" : " or a larger data.val_fraction") : ""));
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
                        FormatDouble(vf), ") holds at most ", tokens,
                        " tokens, but sampling sequences of model.seq_len = ", seq_len, " needs ",
                        seq_len + 1, "; use more data, a shorter seq_len",
                        std::string(name) == "val" ? " or a larger data.val_fraction" : ""));
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
    }
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

}  // namespace moe::job_spec_internal
