#include "worker/interchange/hf_import.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "google/protobuf/struct.pb.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/checkpoint_spec.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The safetensors files of a Hugging Face directory: the index's shards, or model.safetensors.
absl::StatusOr<std::vector<std::string>> WeightFiles(const std::string& dir,
                                                     std::map<std::string, std::string>* weight_map) {
  const std::string index_path = dir + "/model.safetensors.index.json";
  std::error_code ec;
  if (!fs::exists(index_path, ec)) {
    if (!fs::exists(dir + "/model.safetensors", ec)) {
      return absl::NotFoundError(absl::StrCat(dir, " has config.json but neither model.safetensors nor "
                                              "model.safetensors.index.json (PyTorch .bin files are not read: "
                                              "save with safe_serialization=True)"));
    }
    return std::vector<std::string>{"model.safetensors"};
  }
  absl::StatusOr<std::string> text = ReadFile(index_path);
  if (!text.ok()) return text.status();
  google::protobuf::Struct doc;
  if (absl::Status st = ParseJsonObject(*text, &doc); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", st.message()));
  }
  auto it = doc.fields().find("weight_map");
  if (it == doc.fields().end() || !it->second.has_struct_value()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": no \"weight_map\" object"));
  }
  std::set<std::string> seen;
  std::vector<std::string> files;
  for (const auto& [name, file] : it->second.struct_value().fields()) {
    if (!file.has_string_value() || file.string_value().empty() ||
        absl::StrContains(file.string_value(), "/")) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map[\"", name, "\"] is not a file name in this directory"));
    }
    (*weight_map)[name] = file.string_value();
    if (seen.insert(file.string_value()).second) files.push_back(file.string_value());
  }
  std::sort(files.begin(), files.end());
  return files;
}

absl::StatusOr<PretrainedWeights> LoadHf(const std::string& dir, const HfShape& shape) {
  PretrainedWeights out;
  absl::StatusOr<std::string> config = ReadFile(dir + "/config.json");
  if (!config.ok()) return config.status();
  if (absl::Status st = CheckHfConfig(*config, dir + "/config.json", shape, shape.rope_theta, &out.notes);
      !st.ok()) {
    return st;
  }
  std::map<std::string, std::string> weight_map;
  absl::StatusOr<std::vector<std::string>> files = WeightFiles(dir, &weight_map);
  if (!files.ok()) return files.status();
  std::map<std::string, NamedTensor> hf;
  std::vector<std::string> problems;
  SafetensorsReadOptions ropts;
  ropts.widen_to_f32 = true;
  std::set<std::string> dtypes;
  for (const std::string& file : *files) {
    absl::StatusOr<SafetensorsFile> st = ReadSafetensors(dir + "/" + file, ropts);
    if (!st.ok()) return st.status();
    for (NamedTensor& t : st->tensors) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(t.name);
        if (it == weight_map.end() || it->second != file) {
          problems.push_back(absl::StrCat(t.name, ": in ", file, " but the index puts it in ",
                                          it == weight_map.end() ? "no file" : it->second));
          continue;
        }
      }
      if (hf.count(t.name)) {
        problems.push_back(absl::StrCat(t.name, ": in more than one file"));
        continue;
      }
      // A NaN or infinity would train as a divergence at step 1, blamed on the learning rate.
      const auto bad = std::find_if(t.data.begin(), t.data.end(), [](float v) { return !std::isfinite(v); });
      if (bad != t.data.end()) {
        problems.push_back(absl::StrCat(t.name, " in ", file, ": element ", bad - t.data.begin(), " is ",
                                        std::isnan(*bad) ? "NaN" : "infinite",
                                        "; these weights cannot start training (take them from a healthy checkpoint)"));
        continue;
      }
      std::string name = t.name;
      hf[name] = std::move(t);
    }
  }
  for (const auto& [name, file] : weight_map) {
    if (!hf.count(name)) problems.push_back(absl::StrCat(name, ": the index puts it in ", file, ", which lacks it"));
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": its weight files cannot be used:\n",
                                                   JoinProblems(problems)));
  }
  absl::StatusOr<std::vector<NamedTensor>> ours = FromHfTensors(shape, std::move(hf));
  if (!ours.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the tensors of ", dir, " do not fit this job's model:\n",
                                                   ours.status().message()));
  }
  out.tensors = *std::move(ours);
  out.source = absl::StrCat("Hugging Face checkpoint ", dir, " (", files->size(), " safetensors file",
                            files->size() == 1 ? "" : "s", ")");
  return out;
}

absl::StatusOr<PretrainedWeights> LoadOurs(const std::string& dir, const HfShape& shape) {
  absl::StatusOr<CheckpointReader> reader = ResolveCheckpointArgument(dir, nullptr);
  std::error_code ec;  // a step directory's own NotFound (a file it lists is gone) is its error
  if (absl::IsNotFound(reader.status()) && !fs::exists(fs::path(dir) / "MANIFEST", ec)) {
    return absl::NotFoundError(absl::StrCat(
        dir, " is neither a Hugging Face model directory (config.json) nor a checkpoint (step_XXXXXXXX with a "
             "MANIFEST) nor a directory of checkpoints"));
  }
  if (!reader.ok()) return reader.status();
  const std::string& path = reader->path();
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpointWeights(*reader);
  if (!ckpt.ok()) return ckpt.status();
  std::map<std::string, NamedTensor> found;
  for (NamedTensor& t : ckpt->tensors) {
    if (!absl::StartsWith(t.name, "adam_")) found[t.name] = std::move(t);
  }
  std::vector<std::string> problems;
  // The head split: another one can leave every tensor's shape alone (4 heads of 8 as 2 of 16).
  moe::v1::JobSpec saved;
  if (absl::Status st = ParseCheckpointJobSpec(ckpt->spec_json, path, &saved); !st.ok()) return st;
  const HfShape was = HfShape::FromSpec(saved, shape.vocab);
  if (was.heads != shape.heads) {
    problems.push_back(absl::StrCat("model.n_heads is ", was.heads, " in the checkpoint, ", shape.heads, " in this job"));
  }
  if (was.kv_heads != shape.kv_heads) {
    problems.push_back(
        absl::StrCat("model.n_kv_heads is ", was.kv_heads, " in the checkpoint, ", shape.kv_heads, " in this job"));
  }
  PretrainedWeights out;
  // Options that leave every shape alone but change what the weights mean (the router's scoring,
  // the experts' activation, RoPE's base): the weights are taken, and the log says so.
  // (Router biases have their own note below.)
  auto meaning = [](std::vector<std::string> options) {
    options.erase(std::remove_if(options.begin(), options.end(),
                                 [](const std::string& o) { return absl::StrContains(o, "bias_update_rate"); }),
                  options.end());
    return options;
  };
  if (const std::vector<std::string> before = meaning(HfUnrepresentable(saved)), now = meaning(shape.unrepresentable);
      before != now) {
    auto listed = [](const std::vector<std::string>& v) { return v.empty() ? std::string("none") : absl::StrJoin(v, ", "); };
    out.notes.push_back(absl::StrCat("the checkpoint was trained with other recipe options (", listed(before),
                                     "; this job: ", listed(now),
                                     "); its weights are taken as they are"));
  }
  if (was.norm_eps != shape.norm_eps) {
    out.notes.push_back(absl::StrCat("the checkpoint was trained with model.norm_eps ", was.norm_eps,
                                     ", this job uses ", shape.norm_eps));
  }
  if (was.rope_theta != shape.rope_theta) {
    out.notes.push_back(absl::StrCat("the checkpoint was trained with model.attention.rope_theta ", was.rope_theta,
                                     ", this job uses ", shape.rope_theta));
  }
  for (const auto& [name, want] : shape.ours) {
    auto it = found.find(name);
    if (it == found.end()) {
      problems.push_back(absl::StrCat(name, ": missing; the job needs ", ShapeText(want)));
      continue;
    }
    if (it->second.shape != want) {
      problems.push_back(absl::StrCat(name, ": shape ", ShapeText(it->second.shape),
                                      " in the checkpoint, the job needs ", ShapeText(want)));
    }
    out.tensors.push_back(std::move(it->second));
    found.erase(it);
  }
  for (const auto& [name, t] : found) {
    // Loss-free balancing's router biases: a job starting from these weights balances afresh.
    if (absl::EndsWith(name, ".moe.router_bias")) {
      if (out.notes.empty() || out.notes.back().find("router_bias") == std::string::npos) {
        out.notes.push_back("the checkpoint's router biases (blocks.*.moe.router_bias) are not taken; balancing starts from 0");
      }
      continue;
    }
    problems.push_back(absl::StrCat(name, ": not a weight of the job's model (shape ", ShapeText(t.shape), ")"));
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the tensors of checkpoint ", path,
                                                   " do not fit this job's model:\n", JoinProblems(problems)));
  }
  out.source = absl::StrCat("checkpoint ", path, " (step ", ckpt->step, ")");
  return out;
}

}  // namespace

absl::StatusOr<PretrainedWeights> LoadPretrained(const std::string& dir, const HfShape& shape) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model.init_from: ", dir,
                                            fs::exists(dir, ec) ? " is not a directory" : " does not exist",
                                            " (deleted since the job was submitted?); give a Hugging Face model "
                                            "directory or a checkpoint directory"));
  }
  if (fs::exists(fs::path(dir) / "config.json", ec)) {
    if (!shape.unrepresentable.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          dir, " is a Hugging Face model, and this job has ", absl::StrJoin(shape.unrepresentable, ", "),
          ", whose weights no stock architecture holds; remove those options, or start from one of our "
          "checkpoints of the same recipe"));
    }
    return LoadHf(dir, shape);
  }
  return LoadOurs(dir, shape);
}

}  // namespace moe
