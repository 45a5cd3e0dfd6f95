// Trainer's checkpoints: every rank's share of the weights and AdamW moments written as one
// checkpoint by rank 0 (experts gathered by global index), and read back into each rank's slice.
#include "worker/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "common/files.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/checkpoint_spec.h"
#include "worker/data/dataset.h"
#include "worker/interchange/hf_import.h"
#include "worker/model/moe_bookkeeping.h"
#include "worker/train/checkpoint_recipe.h"

namespace moe {
namespace {

// The checkpoint's tensor sets: each parameter set under its name prefix.
constexpr std::pair<const char*, ParamSet> kCheckpointSets[] = {
    {"", ParamSet::kParams}, {"adam_m.", ParamSet::kAdamM}, {"adam_v.", ParamSet::kAdamV}};

}  // namespace

absl::Status Trainer::SaveCheckpoint(int64_t steps_done, const moe::v1::MetricPoint* final_eval_pending) {
  // Rank 0 gathers each expert tensor (E_local experts from every rank, in rank order = global
  // expert order) and writes one checkpoint with every tensor by its global shape. Host memory:
  // one parameter set (the vector CopyToHost fills) and one gathered tensor; each tensor goes
  // to the file as it is produced.
  const int W = comm_->world_size();
  const bool root = comm_->rank() == 0;
  // Loss-free balancing's biases are weights of the model's function (they pick the experts):
  // with the weights, one (E) tensor per layer, the same on every rank.
  const std::vector<float> biases = root ? model_->RouterBiases() : std::vector<float>{};
  const int bias_layers = biases.empty() ? 0 : cfg_.layers;
  const int E = cfg_.experts;
  std::unique_ptr<CheckpointWriter> writer;
  absl::Status st = absl::OkStatus();
  if (root) {
    CheckpointInfo info;
    info.step = steps_done;
    google::protobuf::util::MessageToJsonString(spec_, &info.spec_json);
    if (data_->tokenizer) info.tokenizer = data_->tokenizer->Serialize();
    info.meta["world_size"] = std::to_string(W);
    info.meta["vocab_size"] = std::to_string(cfg_.vocab);
    if (final_eval_pending != nullptr) {
      google::protobuf::util::MessageToJsonString(*final_eval_pending, &info.meta[kFinalEvalPendingMeta]);
    }
    std::vector<TensorSpec> specs;
    for (const auto& [prefix, set] : kCheckpointSets) {
      for (const ParamInfo& p : model_->layout().params()) specs.push_back({prefix + p.name, p.global_shape});
      if (set != ParamSet::kParams) continue;
      for (int l = 0; l < bias_layers; ++l) specs.push_back({RouterBiasName(l), {E}});
    }
    absl::StatusOr<std::unique_ptr<CheckpointWriter>> w =
        CheckpointWriter::Start(opts_.checkpoint_dir, std::move(info), specs, std::max(1, spec_.checkpoint().keep()));
    if (w.ok()) writer = *std::move(w);
    st = w.status();
  }
  // After a failed write rank 0 still takes part in every gather, so no rank waits forever.
  std::vector<float> host, gathered;
  for (const auto& [prefix, set] : kCheckpointSets) {
    model_->CopyToHost(set, &host);
    for (const ParamInfo& p : model_->layout().params()) {
      const float* data = host.data() + p.offset;
      size_t count = static_cast<size_t>(p.size);
      if (p.expert && W > 1) {
        if (root) gathered.resize(count * W);
        comm_->Gather(data, p.size, root ? gathered.data() : nullptr, 0);
        data = gathered.data();
        count *= W;
      }
      if (root && st.ok()) st = writer->Write(prefix + p.name, data, count);
    }
    for (int l = 0; l < bias_layers && set == ParamSet::kParams && st.ok(); ++l) {
      st = writer->Write(RouterBiasName(l), biases.data() + static_cast<size_t>(l) * E, E);
    }
  }
  if (root && st.ok()) st = writer->Finish();
  writer.reset();
  // Every rank learns whether the write worked, so none goes on alone.
  double ok = st.ok() ? 1.0 : 0.0;
  comm_->Broadcast(&ok, sizeof(ok), 0);
  if (!root && ok == 0) return absl::InternalError("rank 0 failed to write the checkpoint");
  if (st.ok() && root) Log(absl::StrCat("checkpoint written at step ", steps_done, " in ", opts_.checkpoint_dir));
  return st;
}

absl::Status Trainer::LoadCheckpoint(const CheckpointReader& ckpt, int64_t* steps_done) {
  // Verified as a whole when opened (no tensor loaded); read here tensor by tensor into one host set.
  const std::string& path = ckpt.path();
  // The shape and recipe keys first: some leave the tensors' shapes alone and would pass the check below.
  moe::v1::JobSpec saved;
  if (absl::Status st = ParseCheckpointJobSpec(ckpt.info().spec_json, path, &saved); !st.ok()) return st;
  int saved_vocab = cfg_.vocab;  // a checkpoint without it: wte's shape speaks below
  if (auto it = ckpt.info().meta.find("vocab_size"); it != ckpt.info().meta.end()) {
    saved_vocab = std::atoi(it->second.c_str());
  }
  if (const std::string diff = ModelShapeDifference(saved, saved_vocab, spec_, cfg_.vocab); !diff.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", path, " does not fit this job's model:\n", diff,
        "\na checkpoint resumes only as the model that made it: set these back as the checkpoint has them, or "
        "give this job its own checkpoint.dir"));
  }
  if (const std::string diff = DataStreamDifference(saved, spec_); !diff.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", path, " was trained with another sequence length than this job's:\n", diff,
        "\nthe sequence length fixes the batches each step samples and the context the model learns, so "
        "the resumed run would not continue the one that made the checkpoint: set model.seq_len back as the "
        "checkpoint has it, or start a new run from its weights (a fresh optimizer and step count) with "
        "model.init_from: ", path, " (moectl submit --from) and its own checkpoint.dir"));
  }
  const std::string tokenizer_diff =
      data_->tokenizer ? CheckpointTokenizerDifference(ckpt.info().tokenizer, *data_->tokenizer,
                                                       Gpt2TokenizerDir(spec_.data()))
                       : "";
  if (!tokenizer_diff.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", path, " was trained with another tokenizer than this job's data gives (", tokenizer_diff,
        "): its token ids would mean other text. ", TokenizerFix(spec_.data()),
        ", or give this job its own checkpoint.dir"));
  }
  if (const std::string diff = RecipeDifference(saved, spec_); !diff.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", path, " was made with another recipe than this job's:\n", diff,
        "\na checkpoint resumes only under the options that made it: set them back as the checkpoint has "
        "them, or give this job its own checkpoint.dir (model.init_from: ", path,
        " starts from its weights when the tensors fit)"));
  }
  const bool biased = !model_->RouterBiases().empty();
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected;
  if (biased) {
    for (int l = 0; l < cfg_.layers; ++l) expected.emplace_back(RouterBiasName(l), std::vector<int64_t>{cfg_.experts});
  }
  for (const auto& set : kCheckpointSets) {
    for (const ParamInfo& info : model_->layout().params()) expected.emplace_back(set.first + info.name, info.global_shape);
  }
  if (absl::Status st = CheckCompatible(ckpt, expected); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", path, " does not fit this job's model: ", st.message()));
  }
  // One set at a time through one host buffer, every element of it read from the checkpoint
  // (CheckCompatible: each parameter is there); each rank takes its own slice of every expert
  // tensor (experts by global index).
  std::vector<float> host(static_cast<size_t>(model_->layout().total()));
  for (const auto& [prefix, set] : kCheckpointSets) {
    for (const ParamInfo& info : model_->layout().params()) {
      const TensorEntry* t = ckpt.Find(prefix + info.name);  // present: CheckCompatible
      const size_t first = info.expert ? static_cast<size_t>(model_->layout().expert_begin()) * (info.size / info.shape[0]) : 0;
      if (absl::Status st = ckpt.Read(*t, first, info.size, host.data() + info.offset); !st.ok()) return st;
    }
    model_->CopyFromHost(set, host);
  }
  if (biased) {
    std::vector<float> biases(static_cast<size_t>(cfg_.layers) * cfg_.experts, 0.f);
    for (int l = 0; l < cfg_.layers; ++l) {
      const TensorEntry* t = ckpt.Find(RouterBiasName(l));
      absl::Status st = ckpt.Read(*t, 0, cfg_.experts, biases.data() + static_cast<size_t>(l) * cfg_.experts);
      if (!st.ok()) return st;
    }
    model_->SetRouterBiases(biases);
  }
  *steps_done = ckpt.info().step;
  if (const std::string changes = ResumeChanges(saved, spec_); !changes.empty()) {
    Log(absl::StrCat("resume: settings changed since checkpoint ", path, ": ", changes));
  }
  return absl::OkStatus();
}

std::optional<moe::v1::MetricPoint> Trainer::FinalEvalPending(const CheckpointReader& ckpt) {
  auto it = ckpt.info().meta.find(kFinalEvalPendingMeta);
  if (it == ckpt.info().meta.end()) return std::nullopt;
  moe::v1::MetricPoint point;
  if (auto st = google::protobuf::util::JsonStringToMessage(it->second, &point); !st.ok()) {
    Log(absl::StrCat("checkpoint ", ckpt.path(), ": its ", kFinalEvalPendingMeta, " is no metric point (",
                     st.ToString(), "); the final evaluation it missed is not run"));
    return std::nullopt;
  }
  return point;
}

absl::Status Trainer::InitFrom(const std::string& dir) {
  HfShape shape = HfShape::FromSpec(spec_, cfg_.vocab);
  shape.ours.clear();  // every tensor of the job's recipe, as the model lays them out
  for (const ParamInfo& info : model_->layout().params()) shape.ours.emplace_back(info.name, info.global_shape);
  absl::StatusOr<PretrainedWeights> w = LoadPretrained(dir, shape);
  // Every rank reads the same files; they agree before anyone goes on.
  double ok = w.ok() ? 1.0 : 0.0;
  comm_->AllReduceSum(&ok, 1);
  if (!w.ok()) return absl::Status(w.status().code(), absl::StrCat("model.init_from: ", w.status().message()));
  if (ok < comm_->world_size()) return absl::InternalError("model.init_from: another rank could not read the weights");
  std::vector<float> params;
  model_->CopyToHost(ParamSet::kParams, &params);
  std::set<std::string> filled;
  for (const NamedTensor& nt : w->tensors) {
    const ParamInfo* info = model_->layout().Find(nt.name);
    if (info == nullptr) return absl::InternalError(absl::StrCat("model.init_from: no parameter ", nt.name));
    const size_t first = info->expert ? static_cast<size_t>(model_->layout().expert_begin()) * (info->size / info->shape[0]) : 0;
    std::copy(nt.data.begin() + first, nt.data.begin() + first + info->size, params.begin() + info->offset);
    filled.insert(nt.name);
  }
  for (const ParamInfo& info : model_->layout().params()) {
    if (!filled.count(info.name)) return absl::InternalError(absl::StrCat("model.init_from: nothing for ", info.name));
  }
  model_->CopyFromHost(ParamSet::kParams, params);
  Log(absl::StrCat("initialised the weights from ", w->source, "; the optimizer starts fresh"));
  for (const std::string& note : w->notes) Log(absl::StrCat("init_from: ", note));
  return absl::OkStatus();
}

namespace {

constexpr char kOwnerFile[] = ".moe-owner";

// What claiming dir for owner finds wrong; "" when the claim is fine (and made).
std::string Claim(const std::string& dir, const std::string& owner, bool resume) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string marker = dir + "/" + kOwnerFile;
  if (fs::exists(marker, ec)) {
    absl::StatusOr<std::string> text = ReadFile(marker);
    if (!text.ok()) return absl::StrCat("cannot read ", marker, ": ", text.status().message());
    std::string found(*text);
    while (!found.empty() && (found.back() == '\n' || found.back() == ' ')) found.pop_back();
    if (found != owner) {
      return absl::StrCat(
          "checkpoint directory ", dir, " belongs to ", found, " (", marker, "), not to this ", owner,
          "; give this job its own checkpoint.dir, start from that job's weights with model.init_from: ", dir,
          " (moectl submit --from), or remove ", marker, " to hand the directory over");
    }
    // Its own checkpoints of an earlier run: a fresh start would replace some and leave the
    // newer ones, which a later resume (or --sample) would take for this run's.
    if (resume) return "";
    absl::StatusOr<std::string> earlier = LatestCheckpoint(dir);
    if (!earlier.ok()) return "";
    return absl::StrCat("checkpoint directory ", dir, " holds this job's checkpoints of an earlier run (newest ",
                        *earlier, "); a fresh start would overwrite some and leave the newer ones. Resume them "
                        "(moe-worker --resume), give this run its own checkpoint.dir, or delete them to start over");
  }
  bool empty = true;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    (void)entry;
    empty = false;
    break;
  }
  // Checkpoints from before the marker existed: a resume asks for them, so it adopts them.
  if (!empty && !resume) {
    return absl::StrCat("checkpoint directory ", dir,
                        " is not empty and no job owns it (no ", kOwnerFile,
                        "); this job would overwrite and rotate away what is there. Give this job its own "
                        "checkpoint.dir, start from those weights with model.init_from: ", dir,
                        ", or resume them (moe-worker --resume)");
  }
  if (absl::Status st = MakeDirs(dir); !st.ok()) return std::string(st.message());
  if (absl::Status st = WriteFileAtomic(marker, owner + "\n"); !st.ok()) return std::string(st.message());
  return "";
}

}  // namespace

std::string Trainer::LockCheckpointDir() {
  const std::string& dir = opts_.checkpoint_dir;
  if (absl::Status st = MakeDirs(dir); !st.ok()) return std::string(st.message());
  absl::StatusOr<DirectoryLock> lock = DirectoryLock::Take(dir);
  // A run that is ending (its process exiting) lets go within moments: a few seconds' grace.
  for (int i = 0; i < 50 && absl::IsFailedPrecondition(lock.status()); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    lock = DirectoryLock::Take(dir);
  }
  if (absl::IsFailedPrecondition(lock.status())) {
    return absl::StrCat("checkpoint directory ", dir,
                        " is in use: another run is training into it now (it holds the directory's lock), and "
                        "two runs in one directory replace each other's checkpoints. Wait for that run to end, "
                        "or give this run its own checkpoint.dir");
  }
  if (!lock.ok()) return std::string(lock.status().message());
  if (!lock->held()) {
    Log(absl::StrCat("note: the filesystem of ", dir, " takes no lock; one run at a time there is up to you"));
  }
  checkpoint_lock_ = *std::move(lock);
  return "";
}

absl::Status Trainer::ClaimCheckpointDir() {
  if (opts_.checkpoint_dir.empty()) return absl::OkStatus();
  std::string problem;
  if (comm_->rank() == 0) {
    problem = LockCheckpointDir();
    if (problem.empty() && !opts_.checkpoint_owner.empty()) {
      problem = Claim(opts_.checkpoint_dir, opts_.checkpoint_owner, opts_.resume);
    }
    if (!problem.empty()) checkpoint_lock_.reset();  // refused: the directory stays free
  }
  double ok = problem.empty() ? 1.0 : 0.0;
  comm_->Broadcast(&ok, sizeof(ok), 0);
  if (comm_->rank() == 0 && !problem.empty()) return absl::FailedPreconditionError(problem);
  if (ok == 0) return absl::FailedPreconditionError("rank 0 refused the checkpoint directory");
  return absl::OkStatus();
}

}  // namespace moe
