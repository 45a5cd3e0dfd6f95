#include "worker/interchange/hf_export.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/json_object.h"
#include "common/usage_error.h"
#include "moe/v1/job.pb.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/checkpoint_spec.h"
#include "common/tokenizer.h"
#include "worker/interchange/hf_layout.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

// Shards in tensor order, each below max_bytes unless one tensor alone is larger.
std::vector<std::vector<const NamedTensor*>> Shard(const std::vector<NamedTensor>& tensors, int64_t max_bytes,
                                                   size_t elem_bytes) {
  std::vector<std::vector<const NamedTensor*>> shards(1);
  int64_t bytes = 0;
  for (const NamedTensor& t : tensors) {
    const int64_t n = static_cast<int64_t>(t.data.size() * elem_bytes);
    if (!shards.back().empty() && bytes + n > max_bytes) {
      shards.emplace_back();
      bytes = 0;
    }
    shards.back().push_back(&t);
    bytes += n;
  }
  return shards;
}

// The export's target as an absolute path without a trailing "/" or "/." ("dir/", "dir/.", ".").
fs::path ExportTarget(const std::string& out_dir) {
  std::error_code ec;
  fs::path out = fs::absolute(out_dir, ec).lexically_normal();
  return out.has_filename() ? out : out.parent_path();
}

// The directory out_dir goes into must exist: the export creates out_dir itself, not its parents
// (a typo in a parent made a whole tree somewhere unexpected).
absl::Status CheckOutDirParent(const std::string& out_dir) {
  std::error_code ec;
  const fs::path parent = ExportTarget(out_dir).parent_path();
  if (fs::is_directory(parent, ec)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "cannot export to ", out_dir, ": ", parent.string(),
      fs::exists(parent, ec) ? " is not a directory" : " does not exist",
      " (the export creates only the last directory of the path); create it first, or give another"));
}

// A ".partial-PID" folder an export left when its process died (killed, out of memory, a power
// cut): inside out (an export into an existing directory, or the one a link to it names) or beside
// it. Removed when no process PID is alive here; a live PID's folder is another export's, and
// stays. This process's PID (a container's exports may all run as the same PID) is a dead one's
// until this export made its own folder (`ours_made`).
void RemoveDeadExportsLeftovers(const fs::path& out, bool ours_made) {
  std::error_code ec;
  auto stale = [ours_made](const std::string& name, const std::string& prefix) {
    if (!absl::StartsWith(name, prefix)) return false;
    int pid = 0;
    if (!absl::SimpleAtoi(name.substr(prefix.size()), &pid) || pid <= 0) return false;
    if (pid == ::getpid()) return !ours_made;
    return ::kill(pid, 0) != 0 && errno == ESRCH;
  };
  const std::string sibling_prefix = out.filename().string() + ".partial-";
  if (sibling_prefix[0] != '.' && fs::is_directory(out.parent_path(), ec)) {
    for (const fs::directory_entry& e : fs::directory_iterator(out.parent_path(), ec)) {
      if (stale(e.path().filename().string(), sibling_prefix)) fs::remove_all(e.path(), ec);
    }
  }
  const fs::path dir = fs::canonical(out, ec);
  if (ec || !fs::is_directory(dir, ec)) return;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (stale(e.path().filename().string(), ".partial-")) fs::remove_all(e.path(), ec);
  }
}

absl::Status CheckOutDir(const std::string& out_dir, bool ours_made = false) {
  std::error_code ec;
  RemoveDeadExportsLeftovers(ExportTarget(out_dir), ours_made);
  // A link to nothing: the export would be written whole and then fail to move in.
  if (fs::is_symlink(fs::symlink_status(out_dir, ec)) && !fs::exists(out_dir, ec)) {
    std::error_code read_ec;
    const fs::path target = fs::read_symlink(out_dir, read_ec);
    return absl::FailedPreconditionError(absl::StrCat(
        out_dir, " is a symbolic link to ", read_ec ? std::string("a path") : target.string(),
        ", which does not exist; create that directory, or export into another one"));
  }
  if (!fs::exists(out_dir, ec)) return absl::OkStatus();
  if (!fs::is_directory(out_dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(out_dir, " exists and is not a directory"));
  }
  if (!fs::is_empty(out_dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(
        out_dir, " exists and is not empty; export into a new directory (or remove this one first)"));
  }
  return absl::OkStatus();
}

// The export written in tmp, a folder inside the existing directory out: its files moved up into
// out, which must still hold nothing else (else nothing moves); a failed move takes back those
// already moved.
absl::StatusOr<HfExportResult> MoveUp(const std::string& tmp, const fs::path& out, const HfExportResult& result) {
  std::error_code ec;
  auto fail = [&](absl::Status st) {
    fs::remove_all(tmp, ec);
    return st;
  };
  for (const fs::directory_entry& e : fs::directory_iterator(out, ec)) {
    if (e.path() != fs::path(tmp)) {
      return fail(absl::FailedPreconditionError(absl::StrCat(
          out.string(), " is no longer empty (", e.path().filename().string(),
          " appeared while the export was written); export into a new directory")));
    }
  }
  for (size_t i = 0; i < result.files.size(); ++i) {
    fs::rename(fs::path(tmp) / result.files[i], out / result.files[i], ec);
    if (ec) {
      const std::string why = ec.message();
      for (size_t j = 0; j < i; ++j) fs::remove(out / result.files[j], ec);
      return fail(absl::InternalError(absl::StrCat("cannot move ", result.files[i], " from ", tmp, " into ",
                                                   out.string(), ": ", why)));
    }
  }
  fs::remove(tmp, ec);
  if (absl::Status st = SyncDir(out.string()); !st.ok()) return st;
  return result;
}

}  // namespace

absl::Status CheckExportOutDirName(const std::string& out_dir) {
  if (out_dir.empty()) {
    return absl::InvalidArgumentError("OUT_DIR is empty; name the directory to create, e.g. out/my-model");
  }
  for (size_t i = 0; i < out_dir.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(out_dir[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "OUT_DIR \"%s\" holds the control byte 0x%02x at byte %d; a path with control characters is "
          "refused (they would reach terminals and logs as they are): choose a plain name",
          absl::CHexEscape(out_dir), c, i));
    }
  }
  return absl::OkStatus();
}

std::string DescribeExport(const HfExportResult& r, const std::string& out_dir) {
  std::string out = absl::StrCat("exported ", r.checkpoint, " (step ", r.step, ") as ", r.architecture, " to ",
                                 out_dir, ": ", absl::StrJoin(r.files, ", "), "\n");
  for (const std::string& note : r.notes) absl::StrAppend(&out, "note: ", note, "\n");
  return out;
}

absl::StatusOr<TensorDtype> ParseExportDtype(const std::string& name) {
  if (name == "fp32" || name == "float32") return TensorDtype::kF32;
  if (name == "bf16" || name == "bfloat16") return TensorDtype::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("--dtype must be bf16 or fp32, got '", name, "'"));
}

absl::StatusOr<HfExportResult> ExportHf(const std::string& checkpoint, const std::string& out_dir,
                                        const HfExportOptions& options) {
  // The output's name and place and a checkpoint argument that names none are the caller's input
  // (UsageError); what goes wrong after is not.
  if (absl::Status st = CheckExportOutDirName(out_dir); !st.ok()) return UsageError(st);
  if (absl::Status st = CheckOutDirParent(out_dir); !st.ok()) return UsageError(st);
  if (absl::Status st = CheckOutDir(out_dir); !st.ok()) return UsageError(st);
  std::vector<std::string> skipped;  // damaged newer checkpoints, for the notes
  absl::StatusOr<CheckpointReader> reader =
      ResolveCheckpointArgument(checkpoint, [&](const std::string& line) { skipped.push_back(line); });
  if (!reader.ok()) {
    // NotFound: no checkpoint there (missing, no directory, none complete); DataLoss (every one
    // damaged) is not the caller's.
    return reader.status().code() == absl::StatusCode::kNotFound ? UsageError(reader.status()) : reader.status();
  }
  const std::string& path = reader->path();
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointWeights(*reader);
  if (!ckpt.ok()) return ckpt.status();
  absl::StatusOr<CheckpointModelSpec> read = ReadCheckpointModelSpec(*ckpt, path);
  if (!read.ok()) return read.status();
  const moe::v1::JobSpec& spec = read->spec;
  const std::unique_ptr<Tokenizer>& tokenizer = read->tokenizer;
  const int vocab = read->vocab;
  HfExportResult result;
  result.checkpoint = path;
  result.notes = std::move(skipped);
  result.step = ckpt->step;

  const HfShape shape = HfShape::FromSpec(spec, vocab);
  if (std::vector<std::string> no = HfUnrepresentable(spec); !no.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", path, " was trained with ", absl::StrJoin(no, ", "),
        ", which no stock Hugging Face architecture represents (Mixtral, or Qwen3-MoE with QK-norm); "
        "transformers could not load it without custom code"));
  }

  // Only the weights: AdamW's moments stay behind. A weight the spec's model lacks (a spec.json
  // with fewer layers than the tensors) is a mismatch, not something to leave out silently.
  std::set<std::string> expected;
  for (const auto& named_shape : OurTensorShapes(shape)) expected.insert(named_shape.first);
  std::vector<NamedTensor> weights;
  std::vector<std::string> extra;
  for (NamedTensor& t : ckpt->tensors) {
    if (absl::StartsWith(t.name, "adam_")) continue;
    if (!expected.count(t.name)) {
      extra.push_back(absl::StrCat(t.name, ": in the checkpoint, not a weight of its spec's model"));
    } else {
      weights.push_back(std::move(t));
    }
  }
  ckpt->tensors.clear();
  absl::StatusOr<std::vector<NamedTensor>> hf = ToHfTensors(shape, std::move(weights));
  if (!hf.ok() || !extra.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", path, " does not match its own spec:\n",
        absl::StrJoin(extra, "\n"), !extra.empty() && !hf.ok() ? "\n" : "", hf.ok() ? "" : hf.status().message()));
  }
  result.architecture = shape.qk_norm ? (shape.is_moe() ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM")
                                      : (shape.is_moe() ? "MixtralForCausalLM" : "MistralForCausalLM");

  HfConfigExtras extras;
  extras.torch_dtype = options.dtype == TensorDtype::kBF16 ? "bfloat16" : "float32";
  extras.rope_theta = shape.rope_theta;
  std::vector<std::pair<std::string, std::string>> files;  // name, contents (small files)
  absl::StatusOr<Gpt2Files> gpt2 = Gpt2FilesOf(ckpt->tokenizer);
  if (gpt2.ok()) {
    absl::StatusOr<std::map<std::string, int64_t>> encoder = ParseJsonStringIntMap(gpt2->encoder_json);
    if (!encoder.ok()) return encoder.status();
    auto eot = encoder->find("<|endoftext|>");
    if (eot != encoder->end()) extras.bos_token_id = extras.eos_token_id = static_cast<int>(eot->second);
    files.emplace_back("vocab.json", gpt2->encoder_json);
    files.emplace_back("merges.txt", gpt2->vocab_bpe);
    const std::string special = R"("<|endoftext|>")";
    files.emplace_back("tokenizer_config.json",
                       absl::StrCat("{\n  \"tokenizer_class\": \"GPT2Tokenizer\",\n  \"model_max_length\": ",
                                    shape.seq_len, ",\n  \"add_prefix_space\": false,\n  \"bos_token\": ", special,
                                    ",\n  \"eos_token\": ", special, ",\n  \"unk_token\": ", special, "\n}\n"));
    files.emplace_back("special_tokens_map.json",
                       absl::StrCat("{\n  \"bos_token\": ", special, ",\n  \"eos_token\": ", special,
                                    ",\n  \"unk_token\": ", special, "\n}\n"));
  } else if (tokenizer) {
    result.notes.push_back(absl::StrCat(
        "the job's tokenizer (", tokenizer->Describe(),
        ") has no Hugging Face equivalent: the export has no tokenizer files; token id i is the i-th "
        "distinct byte of the training text, in byte order"));
  } else {
    result.notes.push_back(
        "the job was trained on pretokenized shards and its checkpoint holds no tokenizer: the export has "
        "no tokenizer files; copy those of the tokenizer the shards were made with");
  }
  if (shape.is_moe() && spec.model().moe().capacity_factor() > 0) {
    result.notes.push_back(absl::StrFormat(
        "the job trained with capacity_factor %g; Hugging Face's Mixtral is dropless, so where a batch "
        "overflowed an expert here, its outputs differ from ours",
        spec.model().moe().capacity_factor()));
  }
  files.emplace_back("config.json", HfConfigJson(shape, extras));
  std::string gen = "{\n";
  if (extras.bos_token_id >= 0) {
    absl::StrAppend(&gen, "  \"bos_token_id\": ", extras.bos_token_id, ",\n  \"eos_token_id\": ",
                    extras.eos_token_id, ",\n");
  }
  absl::StrAppend(&gen, "  \"max_length\": ", shape.seq_len, "\n}\n");
  files.emplace_back("generation_config.json", gen);

  // Everything goes into a temp sibling that is renamed into place at the end; an existing (empty)
  // directory, however named ("dir/.", ".", a link to one), keeps its place: the files go into a
  // hidden folder inside it and move up at the end.
  std::error_code ec;
  fs::path out = ExportTarget(out_dir);
  const bool in_place = fs::is_directory(out, ec);
  if (in_place) {
    out = fs::canonical(out, ec);
    if (ec) return absl::FailedPreconditionError(absl::StrCat("cannot resolve ", out_dir, ": ", ec.message()));
  }
  const std::string tmp = in_place ? (out / absl::StrCat(".partial-", ::getpid())).string()
                                   : absl::StrCat(out.string(), ".partial-", ::getpid());
  fs::remove_all(tmp, ec);
  if (absl::Status st = MakeDirs(tmp); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("cannot write the export to ", out_dir, " (made first as ", tmp,
                                                ", then renamed into place): ", st.message()));
  }
  auto fail = [&](absl::Status st) {
    fs::remove_all(tmp, ec);
    return st;
  };
  for (const auto& [name, contents] : files) {
    if (absl::Status st = WriteFileAtomic(tmp + "/" + name, contents); !st.ok()) return fail(st);
    result.files.push_back(name);
  }
  const size_t elem_bytes = options.dtype == TensorDtype::kBF16 ? 2 : 4;
  const auto shards = Shard(*hf, std::max<int64_t>(1, options.max_shard_bytes), elem_bytes);
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (shards.size() == 1) {
    if (absl::Status st = WriteSafetensors(tmp + "/model.safetensors", shards[0], metadata, options.dtype); !st.ok()) {
      return fail(st);
    }
    result.files.push_back("model.safetensors");
  } else {
    std::vector<std::string> map_lines;
    int64_t total = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
      if (absl::Status st = WriteSafetensors(tmp + "/" + name, shards[i], metadata, options.dtype); !st.ok()) {
        return fail(st);
      }
      for (const NamedTensor* t : shards[i]) {
        map_lines.push_back(absl::StrCat("    ", JsonQuote(t->name), ": ", JsonQuote(name)));
        total += static_cast<int64_t>(t->data.size() * elem_bytes);
      }
      result.files.push_back(name);
    }
    const std::string index = absl::StrCat("{\n  \"metadata\": {\"total_size\": ", total, "},\n  \"weight_map\": {\n",
                                           absl::StrJoin(map_lines, ",\n"), "\n  }\n}\n");
    if (absl::Status st = WriteFileAtomic(tmp + "/model.safetensors.index.json", index); !st.ok()) return fail(st);
    result.files.push_back("model.safetensors.index.json");
  }
  if (in_place) return MoveUp(tmp, out, result);
  if (fs::exists(out, ec)) fs::remove(out, ec);  // empty, checked above
  if (absl::Status st = CheckOutDir(out.string(), /*ours_made=*/true); !st.ok()) return fail(st);
  fs::rename(tmp, out, ec);
  if (ec) {
    return fail(absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", out.string(), ": ", ec.message())));
  }
  if (absl::Status st = SyncDir(out.parent_path().string()); !st.ok()) return st;
  return result;
}

}  // namespace moe
