// The range and relation rules of a job spec: the one place each rule lives, for YAML files
// (after defaults) and gRPC specs alike, and ValidateJobSpec of common/job_spec.h.
#include <unistd.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <regex>
#include <set>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/backend_limits.h"
#include "common/files.h"
#include "common/job_spec_internal.h"
#include "common/memory_fit.h"
#include "common/model_stats.h"
#include "common/sbatch_options.h"

namespace moe {
namespace job_spec_internal {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;
using moe::v1::JobSpec;

// A rule that involves several fields runs only when each of them passed its own check, so one
// mistake is reported once.
class Checker {
 public:
  Checker(const JobSpec& spec, const std::set<std::string>& skip) : s_(spec), skip_(skip) {}

  std::vector<SpecError> Run() {
    // A NUL would cut a path short where the OS reads it (moed once used "/etc/shadow\0x" as
    // /etc/shadow); control characters have no place in a name or path either.
    const v1::DataSpec& d = s_.data();
    const v1::SlurmSpec& sl = s_.resources().slurm();
    for (const auto& [path, value] : std::vector<std::pair<const char*, const std::string*>>{
             {"name", &s_.name()}, {"data.path", &d.path()},
             {"data.tokenizer_dir", &d.tokenizer_dir()}, {"data.cache_dir", &d.cache_dir()},
             {"checkpoint.dir", &s_.checkpoint().dir()}, {"resources.slurm.partition", &sl.partition()},
             {"model.init_from", &s_.model().init_from()},
             {"resources.slurm.account", &sl.account()},
             {"resources.slurm.time_limit", &sl.time_limit()}}) {
      NoControlCharacters(path, *value);
    }
    CheckName();
    CheckModel();
    CheckNormEps();
    CheckInitFrom();
    CheckData();
    CheckTrain();
    CheckResources();
    CheckCheckpoint();
    AtLeast("max_restarts", s_.max_restarts(), 0);
    CheckRelations();
    CheckFp32Range(s_, "");
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
  // C1 controls (U+0080..U+009F) too: a terminal may obey U+009B as it would ESC [.
  void NoControlCharacters(const std::string& path, const std::string& value) {
    for (size_t i = 0; i < value.size();) {
      const size_t len = std::max<size_t>(1, Utf8SequenceLength(value, i));
      if (IsControlCharacter(value, i, len)) {
        const auto u = static_cast<unsigned char>(value[i + len - 1]);
        Fail(path, u == 0 ? std::string("holds a NUL byte; names and paths may not (it would "
                                        "cut the path short)")
                          : absl::StrFormat("holds the control character %s%02X; names and paths may not",
                                            len == 1 ? "0x" : "U+00", u));
        return;
      }
      i += len;
    }
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
      Fail(path, absl::StrCat("must be one of ", absl::StrJoin(EnumNames(desc), ", "), ", got ",
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
    if (std::string why; LookUpPath(value, &why) == PathLookup::kUnreachable) {
      Fail(path, absl::StrCat(value, " ", why, "; the worker could not create or use it there: give a directory "
                              "this user can reach, or let it search the directories on the way (chmod)"));
    } else if (fs::exists(value, ec) && !fs::is_directory(value, ec)) {
      Fail(path, absl::StrCat(value, " exists and is not a directory; give a directory"));
    }
  }

  // Every number of a job is used in fp32 (rates, coefficients, fractions): a value past its
  // range would be infinity in training. Fields another check refused already are left to that
  // error (a job file's error is placed at the value, as every check's).
  void CheckFp32Range(const pb::Message& m, const std::string& prefix) {
    const pb::Reflection* r = m.GetReflection();
    std::vector<const pb::FieldDescriptor*> fields;
    r->ListFields(m, &fields);
    for (const pb::FieldDescriptor* f : fields) {
      const std::string path = prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
      if (f->is_repeated()) continue;
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        CheckFp32Range(r->GetMessage(m, f), path);
      } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_DOUBLE && Ok(path)) {
        const double v = r->GetDouble(m, f);
        if (!std::isnan(v) && !(std::fabs(v) <= std::numeric_limits<float>::max())) {
          Fail(path, absl::StrCat("is beyond fp32's range (at most about 3.4e38), the precision "
                                  "training uses; got ", FormatDouble(v)));
        } else if (v != 0 && std::fabs(v) < std::numeric_limits<float>::min()) {
          // 1e-320 passed "greater than 0" and trained with a rate of 0 (or a denormal).
          Fail(path, BelowFp32Message(FormatDouble(v)));
        }
      }
    }
  }

  // Slurm names (partition, account): what slurmctld takes, so that sbatch does not refuse the
  // job once it is queued (a partition 'gpu$(id)' or 'gpü' passed here and failed there).
  void SlurmName(const std::string& path, const std::string& value, const char* what,
                 const char* how) {
    if (!Ok(path)) return;
    static const std::regex kSlurmName("[A-Za-z0-9_.-]+");
    static const std::regex kPartitions("[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*");
    if (value.empty() || MatchesPattern(value, path == "resources.slurm.partition" ? kPartitions
                                                                                  : kSlurmName)) {
      return;
    }
    Fail(path, absl::StrCat("must be a Slurm ", what, " (letters, digits, '_', '-' and '.'), got '",
                            Truncate(value), "'; ", how));
  }

  void CheckName() {
    static const std::regex kName("[a-z0-9-]{1,63}");
    if (Ok("name") && !MatchesPattern(s_.name(), kName)) {
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
    } else if (std::string why = RoundsToOneInFp32(m.dropout()); !why.empty()) {
      Fail("model.dropout", why);
    }
    const v1::MoeSpec& e = m.moe();
    Between("model.moe.num_experts", e.num_experts(), 1, kMaxExperts);
    AtLeast("model.moe.top_k", e.top_k(), 1);
    Between("model.moe.expert_hidden", e.expert_hidden(), 1, kMaxExpertHidden);
    NonNegative("model.moe.capacity_factor", e.capacity_factor());
    NonNegative("model.moe.aux_loss_coef", e.aux_loss_coef());
    NonNegative("model.moe.z_loss_coef", e.z_loss_coef());
    // 0 stands for the default (a spec that never set it); a base at or below 1 has no meaning.
    const double theta = m.attention().rope_theta();
    if (!(theta == 0 || (theta > 1 && std::isfinite(theta)))) {
      Fail("model.attention.rope_theta",
           absl::StrCat("must be greater than 1 (10000 by default, 1e6 for Mixtral and Qwen), got ",
                        FormatDouble(theta)));
    } else if (theta > FLT_MAX) {
      // The workers keep the base in fp32: above its largest value it is infinite and every
      // frequency but the first is 0, which turns RoPE off without a word.
      Fail("model.attention.rope_theta",
           absl::StrCat("must be at most 3.4e38 (fp32's largest value; 10000 by default, 1e6 for "
                        "Mixtral and Qwen), got ",
                        FormatDouble(theta)));
    }
  }

  // RMSNorm's epsilon (0: the default 1e-5). Kept in fp32 by the workers, added to mean(x^2).
  void CheckNormEps() {
    const double eps = s_.model().norm_eps();
    if (!(eps == 0 || (eps >= 1e-12 && eps <= 0.1))) {
      Fail("model.norm_eps", absl::StrCat("must be from 1e-12 to 0.1 (RMSNorm's epsilon: 1e-05 by default, "
                                          "1e-06 for Qwen and DeepSeek), got ", FormatDouble(eps)));
    }
  }

  // Weights to start from: read when the job starts, so they must be there now.
  void CheckInitFrom() {
    const std::string& dir = s_.model().init_from();
    if (dir.empty() || !AbsolutePath("model.init_from", dir)) return;
    std::error_code ec;
    if (std::string why; LookUpPath(dir, &why) == PathLookup::kUnreachable) {
      Fail("model.init_from", absl::StrCat(dir, " ", why, "; give a directory this user can read, or let it "
                                           "search the directories on the way (chmod)"));
    } else if (!fs::is_directory(dir, ec)) {
      Fail("model.init_from", absl::StrCat(dir, fs::exists(dir, ec) ? " is not a directory" : " does not exist",
                                           "; give a Hugging Face model directory "
                                           "(config.json + safetensors) or a checkpoint directory"));
    }
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
    for (const auto& [key, beta, usual] : {std::tuple{"train.beta1", t.beta1(), "0.9"},
                                           std::tuple{"train.beta2", t.beta2(), "0.95"}}) {
      if (!(beta >= 0 && beta < 1)) {
        Fail(key, absl::StrCat("must be at least 0 and less than 1 (AdamW's moment decay; ", usual,
                               " by default), got ", FormatDouble(beta)));
      } else if (std::string why = RoundsToOneInFp32(beta); !why.empty()) {
        Fail(key, why);
      }
    }
    NonNegative("train.grad_clip", t.grad_clip());
    Chosen("train.precision", t.precision(), v1::Precision_descriptor());
    AtLeast("train.eval_every", t.eval_every(), 1);
    AtLeast("train.eval_batches", t.eval_batches(), 1);
    AtLeast("train.log_every", t.log_every(), 1);
    if (t.schedule() != v1::SCHEDULE_UNSPECIFIED) Chosen("train.schedule", t.schedule(), v1::Schedule_descriptor());
    // 0 stands for the default 0.2 (a spec that never set it).
    if (!(t.decay_fraction() >= 0 && t.decay_fraction() <= 1)) {
      Fail("train.decay_fraction", absl::StrCat("must be greater than 0 and at most 1 (the share of the steps "
                                                "that decays, 0.2 by default), got ",
                                                FormatDouble(t.decay_fraction())));
    }
  }

  void CheckResources() {
    const v1::ResourceSpec& r = s_.resources();
    Between("resources.ranks", r.ranks(), 1, kMaxRanks);
    Chosen("resources.device", r.device(), v1::Device_descriptor());
    Chosen("resources.launcher", r.launcher(), v1::Launcher_descriptor());
    Between("resources.threads_per_rank", r.threads_per_rank(), 0, kMaxThreadsPerRank);
    if (r.allow_oversubscribe_memory() && r.device() != v1::DEVICE_CUDA && Ok("resources.device")) {
      Fail("resources.allow_oversubscribe_memory",
           "only applies to device cuda (moed checks a cuda job's memory estimate against its GPUs); "
           "remove it, or set resources.device: cuda");
    }
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
      } else if (std::string why = RefusedSbatchOption(arg); !why.empty()) {
        Fail(path, why);
      }
      // One entry is one argv word: the partition goes in it (--partition=NAME, -pNAME).
      if (arg == "-p" || arg == "--partition" || arg == "--partition=") {
        Fail(path, absl::StrCat("'", arg, "' names no partition: each entry is one word for sbatch, so give the "
                                "partition in it: --partition=NAME (or -pNAME), or use resources.slurm.partition"));
      } else if (absl::StartsWith(arg, "-p=")) {
        Fail(path, absl::StrCat("'", Truncate(arg), "': sbatch would read the partition as '", Truncate(arg.substr(2)),
                                "'; write --partition=", Truncate(arg.substr(3)), " (or -p", Truncate(arg.substr(3)),
                                ")"));
      } else if (absl::StartsWith(arg, "--partition=") || (absl::StartsWith(arg, "-p") && arg.size() > 2)) {
        partition_in_args = true;
      }
    }
    if (sl.partition().empty() && !partition_in_args) {
      Fail("resources.slurm.partition",
           "is required with launcher slurm (or pass --partition=NAME or -pNAME in "
           "resources.slurm.extra_sbatch_args); see sinfo for the partitions");
    } else {
      SlurmName("resources.slurm.partition", sl.partition(),
                "partition name or a list of them separated by ','", "sinfo lists the partitions");
    }
    AtLeast("resources.slurm.nodes", sl.nodes(), 1);
    AtLeast("resources.slurm.ranks_per_node", sl.ranks_per_node(), 1);
    // No node holds more (100000 passed here and failed at sbatch as a bad gres, once queued).
    constexpr int kMaxGpusPerNode = 64;
    Between("resources.slurm.gpus_per_node", sl.gpus_per_node(), 0, kMaxGpusPerNode);
    // Slurm keeps a limit in minutes as a 32-bit count: at most 7 digits of minutes, 6 of days
    // (a longer number passed here and failed at sbatch, once the job was queued).
    static const std::regex kTime(
        "[0-9]{1,7}(:[0-9]{1,2}){0,2}|[0-9]{1,6}-[0-9]{1,2}(:[0-9]{1,2}){0,2}|UNLIMITED|INFINITE",
        std::regex::icase);  // sbatch takes unlimited, Unlimited, infinite too
    if (!sl.time_limit().empty() && !MatchesPattern(sl.time_limit(), kTime)) {
      Fail("resources.slurm.time_limit",
           absl::StrCat("must be a Slurm time (MM, HH:MM:SS, D-HH, D-HH:MM:SS; at most 7 digits of "
                        "minutes or 6 of days) or UNLIMITED, got '",
                        Truncate(sl.time_limit()), "'"));
    } else if (const int64_t limit = SlurmTimeLimitSeconds(sl.time_limit()); limit > 0) {
      // Slurm signals the batch script the lead before the limit (up to 60 s earlier); it then
      // checkpoints and requeues. A limit within that signals every run at its start: the job
      // requeues over and over (a 5-minute limit did).
      int lead = kSignalLeadSeconds;
      for (const std::string& arg : sl.extra_sbatch_args()) {
        const int arg_lead = ParseSbatchSignal(arg).lead_seconds;
        if (arg_lead >= 0) lead = arg_lead;
      }
      if (limit <= lead + 60) {
        Fail("resources.slurm.time_limit",
             absl::StrCat("'", sl.time_limit(), "' leaves no time to train: Slurm signals the job ",
                          lead, " s before its limit (up to 60 s earlier) to checkpoint and "
                          "requeue it, so every run would requeue at once; give more than ",
                          (lead + 60) / 60, " minutes (e.g. \"", (lead + 60) / 60 + 10,
                          "\"), or a shorter lead in extra_sbatch_args, e.g. "
                          "\"--signal=B:USR1@60\""));
      }
    }
    SlurmName("resources.slurm.account", sl.account(), "account name",
              "sacctmgr show associations user=$USER lists yours");
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
    // What the GPU backend cannot run is refused here, not at run time (common/backend_limits.h).
    if (Ok("resources.device") && r.device() == v1::DEVICE_CUDA) {
      const v1::ModelSpec& m = s_.model();
      if (Ok("model.d_model") && Ok("model.n_heads") && m.n_heads() > 0 && m.d_model() % m.n_heads() == 0 &&
          !CudaRunsHeadSize(m.d_model() / m.n_heads())) {
        Fail("model.n_heads",
             absl::StrCat("gives head size d_model / n_heads = ", m.d_model() / m.n_heads(),
                          ", which device cuda does not run; it runs head sizes ", CudaHeadSizesText(),
                          " (choose n_heads = d_model / one of them, or use device: cpu)"));
      }
      if (Ok("model.moe.num_experts") && m.moe().num_experts() > kCudaMaxExperts) {
        Fail("model.moe.num_experts",
             absl::StrCat("device cuda runs at most ", kCudaMaxExperts, " experts per layer, got ",
                          m.moe().num_experts(), " (use at most ", kCudaMaxExperts, ", or device: cpu)"));
      }
      if (Ok("model.moe.top_k") && m.moe().num_experts() > 1 && m.moe().top_k() > kCudaMaxTopK) {
        Fail("model.moe.top_k",
             absl::StrCat("device cuda routes each token to at most ", kCudaMaxTopK, " experts, got ",
                          m.moe().top_k(), " (use top_k at most ", kCudaMaxTopK, ", or device: cpu)"));
      }
      if (Ok("model.moe.expert_hidden") && m.moe().expert_hidden() % kCudaExpertHiddenStep != 0) {
        const int up = (m.moe().expert_hidden() / kCudaExpertHiddenStep + 1) * kCudaExpertHiddenStep;
        Fail("model.moe.expert_hidden",
             absl::StrCat("device cuda runs expert_hidden multiples of ", kCudaExpertHiddenStep, ", got ",
                          m.moe().expert_hidden(), " (use ", up, ", or device: cpu)"));
      }
      // Shared experts run through the same bf16 products; a size equal to expert_hidden (its
      // default) was checked just above.
      const int fs = m.moe().shared_expert_hidden();
      if (Ok("model.moe.shared_expert_hidden") && m.moe().shared_experts() > 0 && fs != m.moe().expert_hidden() &&
          fs % kCudaExpertHiddenStep != 0) {
        const int up = (fs / kCudaExpertHiddenStep + 1) * kCudaExpertHiddenStep;
        Fail("model.moe.shared_expert_hidden",
             absl::StrCat("device cuda runs shared_expert_hidden multiples of ", kCudaExpertHiddenStep,
                          " (the shared experts go through the routed experts' bf16 products), got ", fs, " (use ", up,
                          ", or device: cpu)"));
      }
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
    CheckRecipeOptions(
        s_, [this](const std::string& path) { return Ok(path); },
        [this](const std::string& path, std::string message) { Fail(path, std::move(message)); });
    if (Ok("data.tokenizer") && Ok("model.vocab_size")) CheckVocab();
    CheckMemory();
    CheckDataFiles(
        s_, [this](const std::string& path) { return Ok(path); },
        [this](const std::string& path, std::string message) { Fail(path, std::move(message)); });
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

  // A shape too large for any machine is refused here rather than dying in the worker: the
  // per-rank estimate of common/model_stats.h (what moectl validate prints) against
  // MaxRankBytes. The error names the dimension that, brought back to the largest ordinary
  // size, shrinks the estimate the most, and the largest value of it that would fit.
  void CheckMemory() {
    for (const char* f :
         {"model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.seq_len",
          "model.vocab_size", "model.moe.num_experts", "model.moe.top_k",
          "model.moe.expert_hidden", "train.batch_size", "train.grad_accum", "train.precision",
          "resources.ranks", "resources.device"}) {
      if (!Ok(f)) return;
    }
    JobSpec sized = s_;
    // The char tokenizer's vocabulary is the text's byte values: 256 at most.
    if (sized.model().vocab_size() == 0) sized.mutable_model()->set_vocab_size(256);
    const int64_t limit = MaxRankBytes(sized);
    const ModelStats stats = ComputeModelStats(sized);
    if (stats.total_bytes <= limit) return;

    struct Dim {
      const char* path;
      int64_t value;
      int64_t ordinary;  // the largest size of this dimension in today's large models
      void (*set)(JobSpec*, int64_t);
    };
    const int64_t micro = int64_t{64} * s_.resources().ranks() * s_.train().grad_accum();
    const Dim dims[] = {
        // expert_hidden at its default (4 * d_model) follows d_model.
        {"model.d_model", s_.model().d_model(), 8192,
         [](JobSpec* j, int64_t v) {
           v1::ModelSpec* m = j->mutable_model();
           if (int64_t{m->moe().expert_hidden()} == 4 * int64_t{m->d_model()}) {
             m->mutable_moe()->set_expert_hidden(static_cast<int>(4 * v));
           }
           m->set_d_model(static_cast<int>(v));
         }},
        {"model.n_layers", s_.model().n_layers(), 128,
         [](JobSpec* j, int64_t v) { j->mutable_model()->set_n_layers(static_cast<int>(v)); }},
        {"model.moe.num_experts", s_.model().moe().num_experts(), 256,
         [](JobSpec* j, int64_t v) {
           j->mutable_model()->mutable_moe()->set_num_experts(static_cast<int>(v));
         }},
        {"model.moe.expert_hidden", s_.model().moe().expert_hidden(), 32768,
         [](JobSpec* j, int64_t v) {
           j->mutable_model()->mutable_moe()->set_expert_hidden(static_cast<int>(v));
         }},
        {"model.seq_len", s_.model().seq_len(), 32768,
         [](JobSpec* j, int64_t v) { j->mutable_model()->set_seq_len(static_cast<int>(v)); }},
        // 64 sequences per rank and micro-batch.
        {"train.batch_size", s_.train().batch_size(), micro,
         [](JobSpec* j, int64_t v) { j->mutable_train()->set_batch_size(static_cast<int>(v)); }},
    };
    auto total_with = [&](const Dim& d, int64_t v) {
      JobSpec j = sized;
      d.set(&j, v);
      return static_cast<double>(ComputeModelStats(j).total_bytes);
    };
    const Dim* culprit = &dims[0];
    double best = 0;
    for (const Dim& d : dims) {
      const double shrink =
          static_cast<double>(stats.total_bytes) / total_with(d, std::min(d.value, d.ordinary));
      if (shrink > best) best = shrink, culprit = &d;
    }
    // The estimate grows with every dimension: the largest value that fits, by bisection.
    int64_t lo = 0, hi = culprit->value;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (total_with(*culprit, mid) <= static_cast<double>(limit)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    std::string fix =
        lo >= 1 ? absl::StrCat("lower ", culprit->path, " to at most ", lo,
                               " (the other dimensions as they are)")
                : absl::StrCat("even ", culprit->path,
                               " 1 would not fit; reduce model.d_model, model.n_layers and "
                               "model.moe.expert_hidden too");
    if (culprit->path == std::string("model.moe.num_experts")) {
      absl::StrAppend(&fix, ", or spread the experts over more ranks (resources.ranks; each "
                            "holds num_experts / ranks)");
    } else if (culprit->path == std::string("train.batch_size")) {
      absl::StrAppend(&fix, ", or raise train.grad_accum or resources.ranks");
    }
    Fail(culprit->path,
         absl::StrCat(
             culprit->value, " makes the job need about ",
             FormatBytes(static_cast<double>(stats.total_bytes)),
             " per rank (moectl validate's estimate: ", DescribeComponents(stats), "), more than the ",
             FormatBytes(static_cast<double>(limit)),
             s_.resources().device() == v1::DEVICE_CUDA ? " any one GPU can hold"
                                                        : " one machine's memory can hold",
             "; ", fix));
  }

  const JobSpec& s_;
  const std::set<std::string>& skip_;
  std::set<std::string> failed_;
  std::vector<SpecError> errors_;
};

}  // namespace

std::vector<SpecError> CheckJobSpec(const JobSpec& spec, const std::set<std::string>& skip) {
  return Checker(spec, skip).Run();
}

}  // namespace job_spec_internal

std::vector<SpecError> ValidateJobSpec(const moe::v1::JobSpec& spec) {
  static const std::set<std::string> kNothingSkipped;
  return job_spec_internal::CheckJobSpec(spec, kNothingSkipped);
}

}  // namespace moe
