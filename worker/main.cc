// moe-worker: one rank of a training job. main only parses flags, then either trains
// (standalone with --job, or launched by moed with --spec/--moed/--job-id) or samples text
// from a checkpoint (--sample), or exports one for Hugging Face (--export).
#include <chrono>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <new>
#include <stdexcept>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/path_policy.h"
#include "common/files.h"
#include "common/job_spec.h"
#include "common/memory_fit.h"
#include "common/metrics_spill.h"
#include "common/model_stats.h"
#include "common/usage_error.h"
#include "google/protobuf/util/json_util.h"
#include "kernels/threads.h"
#include "moe_version.h"
#include "worker/parallel/comm_mpi.h"
#include "worker/data/dataset.h"
#include "worker/interchange/hf_export.h"
#include "worker/sample/generate.h"
#include "worker/model/allocation_error.h"
#include "worker/model/model_config.h"
#include "worker/report/reporter.h"
#include "worker/train/prepare_data.h"
#include "worker/train/signals.h"
#include "worker/train/trainer.h"

namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  moe-worker --job JOB.yaml [--checkpoint-dir DIR | --no-checkpoint] [--resume] [--max-steps N]\n"
    "             (--no-checkpoint: writes none, not even at the end; for benchmarks and trials)\n"
    "  moe-worker --spec SPEC.json --moed HOST:PORT --job-id ID [--attempt N] [--attempt-dir DIR]\n"
    "             [--checkpoint-dir DIR] [--resume]\n"
    "             (--attempt-dir: moed's folder for the attempt; metric points moed has not confirmed\n"
    "             when the rank ends are left there, and moed stores them once the attempt is over)\n"
    "  moe-worker --sample CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "             [--device cpu|cuda|auto] [--no-kv-cache] (tokens printed as they come, with a KV cache on\n"
    "             the GPU when there is one; --no-kv-cache: the whole context per token on the CPU)\n"
    "  moe-worker --score CHECKPOINT --batch-out FILE [--logits-out FILE] [--greedy N --greedy-out FILE]\n"
    "             (CE on the first held-out batch, as JSON; the first sequence's logits; N greedy tokens)\n"
    "  moe-worker --export CHECKPOINT --format hf --out DIR [--dtype fp32|bf16]\n"
    "  moe-worker --version | --help\n"
    "One form a run: --job, --spec, --sample, --score and --export do not go together, and each form\n"
    "takes only the flags shown with it (another form's flag is refused, exit 2): --moed, --job-id,\n"
    "--attempt and --attempt-dir only with --spec, which is moed's form and needs --moed and --job-id.\n"
    "Every training form also takes --threads N and --comm-timeout SECS (how long a collective may wait\n"
    "for a peer before the job is aborted, MPI and NCCL alike; default 300); --sample and --score take\n"
    "--threads N too (CPU threads; 0, the default, the machine's cores).\n"
    "Run several ranks with: mpirun -np W moe-worker --job JOB.yaml (as root also\n"
    "--allow-run-as-root, or OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)\n"
    "Exit codes: 0 done; 2 bad usage or input: a flag, an invalid job, and for --sample, --score and\n"
    "--export also a checkpoint argument that names none, outputs that name one file or no regular file,\n"
    "an --out that is not empty or whose parent directory is missing, a --greedy that leaves no prompt,\n"
    "--no-kv-cache with --device cuda, a prompt the tokenizer cannot write;\n"
    "1 a failure while running (memory, a damaged checkpoint, the job's data, no GPU for --device cuda,\n"
    "a write); 143 stopped by SIGTERM or SIGINT: after its checkpoint, or with nothing to checkpoint\n"
    "while it prepared the data or before its first step.\n";

struct WorkerFlags {
  std::string job_yaml, spec_json, moed, job_id, checkpoint_dir, attempt_dir;
  std::vector<std::string> given;  // the flags given, in order (each option once per use)
  std::vector<std::string> runs;   // the kinds of run asked for: --job, --spec, --sample, ...
  int attempt = 0;
  bool resume = false;
  bool no_checkpoint = false;
  int max_steps = -1;
  int threads = 0;
  double comm_timeout_s = 300;
  moe::SampleOptions sample;
  bool sampling = false;
  std::string score_checkpoint, batch_out;
  moe::ScoreExtras score_extras;
  std::string export_checkpoint, export_format, export_out, export_dtype = "fp32";
};

// The kinds of run (the flag that names each) and the options each takes: an option given to a
// run that does not take it is refused, naming both (it was ignored without a word: --max-steps
// beside --sample, --tokens beside --export).
enum Run : unsigned { kJob = 1, kSpec = 2, kSample = 4, kScore = 8, kExport = 16 };
constexpr unsigned kTrain = kJob | kSpec;

struct RunFlag {
  const char* flag;
  unsigned runs;       // the runs that take it
  const char* owners;  // those runs, in words
};

constexpr RunFlag kRunFlags[] = {
    {"--moed", kSpec, "moed's --spec runs"},
    {"--job-id", kSpec, "moed's --spec runs"},
    {"--attempt", kSpec, "moed's --spec runs"},
    {"--attempt-dir", kSpec, "moed's --spec runs"},
    {"--checkpoint-dir", kTrain, "training runs (--job, --spec)"},
    {"--resume", kTrain, "training runs (--job, --spec)"},
    {"--max-steps", kTrain, "training runs (--job, --spec)"},
    {"--comm-timeout", kTrain, "training runs (--job, --spec)"},
    {"--no-checkpoint", kJob, "--job runs by hand (moed's jobs always checkpoint)"},
    {"--threads", kTrain | kSample | kScore, "training runs, --sample and --score"},
    {"--prompt", kSample, "--sample"},
    {"--tokens", kSample, "--sample"},
    {"--temperature", kSample, "--sample"},
    {"--top-k", kSample, "--sample"},
    {"--seed", kSample, "--sample"},
    {"--device", kSample, "--sample"},
    {"--no-kv-cache", kSample, "--sample"},
    {"--batch-out", kScore, "--score"},
    {"--logits-out", kScore, "--score"},
    {"--greedy", kScore, "--score"},
    {"--greedy-out", kScore, "--score"},
    {"--format", kExport, "--export"},
    {"--out", kExport, "--export"},
    {"--dtype", kExport, "--export"},
};

unsigned RunOf(const std::string& flag) {
  if (flag == "--job") return kJob;
  if (flag == "--spec") return kSpec;
  if (flag == "--sample") return kSample;
  if (flag == "--score") return kScore;
  if (flag == "--export") return kExport;
  return 0;
}

// "" when every option given belongs to `run` (the flag that names it), else why not.
std::string CheckFlagsOfRun(const std::vector<std::string>& given, const std::string& run) {
  for (const std::string& flag : given) {
    for (const RunFlag& f : kRunFlags) {
      if (flag != f.flag || (f.runs & RunOf(run)) != 0) continue;
      return absl::StrCat(flag, " is for ", f.owners,
                          run == "--job" && f.runs == kSpec ? " (a --job run by hand reports to no moed)"
                                                            : absl::StrCat(", not ", run),
                          "; leave it out");
    }
  }
  return "";
}

// Returns an error message, or "" when the flags are good.
std::string ParseFlags(int argc, char** argv, WorkerFlags* f) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) -> bool {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    // An integer flag; every one of them counts something, so none is negative (and some, below
    // `least`, would count nothing: `why` says what they count).
    auto int_flag = [&](int* out, int least = 0, const char* why = "") -> std::string {
      if (!value(&v)) return a + " needs a value";
      if (!absl::SimpleAtoi(v, out)) {
        int64_t wide = 0;  // a whole number past int's range is named as such
        const size_t digits = v.size() - (absl::StartsWith(v, "-") ? 1 : 0);
        if (absl::SimpleAtoi(v, &wide) ||
            (digits > 0 && v.find_first_not_of("0123456789", v.size() - digits) == std::string::npos)) {
          return absl::StrCat(a, " is out of range (at most ", std::numeric_limits<int>::max(), "), got ", v);
        }
        return absl::StrCat(a, " must be an integer, got '", v, "'");
      }
      if (*out < 0 && least == 0) return absl::StrCat(a, " must be 0 or more, got ", v);
      if (*out < least) return absl::StrCat(a, " must be at least ", least, why, ", got ", v);
      return "";
    };
    std::string err;
    if (RunOf(a) != 0) {
      f->runs.push_back(a);
    } else {
      f->given.push_back(a);
    }
    if (a == "--job") {
      if (!value(&f->job_yaml) || f->job_yaml.empty()) return "--job needs a file";
    } else if (a == "--spec") {
      if (!value(&f->spec_json) || f->spec_json.empty()) return "--spec needs a file";
    } else if (a == "--moed") {
      if (!value(&f->moed)) return "--moed needs HOST:PORT";
    } else if (a == "--job-id") {
      if (!value(&f->job_id)) return "--job-id needs a value";
    } else if (a == "--checkpoint-dir") {
      if (!value(&f->checkpoint_dir) || f->checkpoint_dir.empty()) return "--checkpoint-dir needs a directory";
    } else if (a == "--attempt") {
      err = int_flag(&f->attempt);
    } else if (a == "--attempt-dir") {
      if (!value(&f->attempt_dir)) return "--attempt-dir needs a directory";
    } else if (a == "--max-steps") {
      err = int_flag(&f->max_steps, 1, " (the steps this run trains)");
    } else if (a == "--threads") {
      err = int_flag(&f->threads);
      if (err.empty() && f->threads > moe::kMaxThreadsPerRank) {
        err = absl::StrCat("--threads must be at most ", moe::kMaxThreadsPerRank,
                           " (0 takes the machine's cores), got ", v);
      }
    } else if (a == "--resume") {
      f->resume = true;
    } else if (a == "--no-checkpoint") {
      f->no_checkpoint = true;
    } else if (a == "--comm-timeout") {
      if (!value(&v) || !absl::SimpleAtod(v, &f->comm_timeout_s) || !(f->comm_timeout_s > 0) ||
          !std::isfinite(f->comm_timeout_s)) {
        return "--comm-timeout needs a positive number of seconds";
      }
    } else if (a == "--no-kv-cache") {
      f->sample.kv_cache = false;
    } else if (a == "--device") {
      if (!value(&f->sample.device) ||
          (f->sample.device != "cpu" && f->sample.device != "cuda" && f->sample.device != "auto")) {
        return "--device needs cpu, cuda or auto";
      }
    } else if (a == "--sample") {
      f->sampling = true;
      if (!value(&f->sample.checkpoint) || f->sample.checkpoint.empty()) return "--sample needs a checkpoint directory";
    } else if (a == "--score") {
      if (!value(&f->score_checkpoint) || f->score_checkpoint.empty()) return "--score needs a checkpoint directory";
    } else if (a == "--export") {
      if (!value(&f->export_checkpoint) || f->export_checkpoint.empty()) return "--export needs a checkpoint directory";
    } else if (a == "--format") {
      if (!value(&f->export_format)) return "--format needs a value (hf)";
    } else if (a == "--out") {
      if (!value(&f->export_out)) return "--out needs a directory";
    } else if (a == "--dtype") {
      if (!value(&f->export_dtype)) return "--dtype needs fp32 or bf16";
    } else if (a == "--logits-out") {
      if (!value(&f->score_extras.logits_out)) return "--logits-out needs a file";
    } else if (a == "--greedy") {
      err = int_flag(&f->score_extras.greedy_tokens);
    } else if (a == "--greedy-out") {
      if (!value(&f->score_extras.greedy_out)) return "--greedy-out needs a file";
    } else if (a == "--batch-out") {
      if (!value(&f->batch_out)) return "--batch-out needs a file";
    } else if (a == "--prompt") {
      if (!value(&f->sample.prompt)) return "--prompt needs text";
    } else if (a == "--tokens") {
      err = int_flag(&f->sample.tokens);
    } else if (a == "--top-k") {
      err = int_flag(&f->sample.top_k);
    } else if (a == "--temperature") {
      if (!value(&v) || !absl::SimpleAtod(v, &f->sample.temperature) || !(f->sample.temperature > 0) ||
          !std::isfinite(f->sample.temperature)) {
        return "--temperature needs a number greater than 0 (0.8 by default; lower is more greedy)";
      }
    } else if (a == "--seed") {
      if (!value(&v) || !absl::SimpleAtoi(v, &f->sample.seed)) return "--seed needs a whole number, 0 or more";
    } else if (a == "--version") {
      std::printf("moe-worker %s\n", moe::kMoeVersion);
      std::exit(0);
    } else if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      std::exit(0);
    } else {
      return absl::StrCat("unknown flag '", a, "'");
    }
    if (!err.empty()) return err;
  }
  // One run at a time: --sample, --score and --export read the job from the checkpoint, and a
  // --job beside them was ignored without a word.
  for (size_t i = 1; i < f->runs.size(); ++i) {
    const std::string& first = f->runs[0];
    const std::string& other = f->runs[i];
    if (other == first) return absl::StrCat(first, " is given twice; give it once");
    if ((first == "--job" || first == "--spec") && (other == "--job" || other == "--spec")) {
      return "give exactly one of --job or --spec";
    }
    return absl::StrCat(first, " and ", other, " are two runs of moe-worker; give one (--sample, --score and "
                        "--export read the job from the checkpoint)");
  }
  if (f->runs.empty()) return "give exactly one of --job or --spec (or --sample, --score, --export)";
  if (std::string err = CheckFlagsOfRun(f->given, f->runs[0]); !err.empty()) return err;
  if (!f->score_checkpoint.empty()) {
    if (f->score_extras.greedy_tokens > 0 && f->score_extras.greedy_out.empty()) return "--greedy needs --greedy-out FILE";
    return f->batch_out.empty() ? "--score needs --batch-out FILE" : "";
  }
  if (!f->export_checkpoint.empty()) {
    if (f->export_format != "hf") return "--export needs --format hf (the only format)";
    if (f->export_out.empty()) return "--export needs --out DIR";
    if (!moe::ParseExportDtype(f->export_dtype).ok()) return "--dtype must be fp32 or bf16";
    return "";
  }
  // --spec is moed's form (its rank reports to moed, its checkpoints are the job's); by hand a run
  // is --job (a --spec alone trained and wrote ./checkpoints without a word).
  if (!f->spec_json.empty() && (f->moed.empty() || f->job_id.empty())) {
    return absl::StrCat("--spec is moed's form of a run and needs ", f->moed.empty() ? "--moed HOST:PORT" : "",
                        f->moed.empty() && f->job_id.empty() ? " and " : "", f->job_id.empty() ? "--job-id ID" : "",
                        "; to train by hand, give --job JOB.yaml");
  }
  if (f->no_checkpoint) {
    if (f->resume || !f->checkpoint_dir.empty()) {
      return "--no-checkpoint cannot go with --resume or --checkpoint-dir: leave one out";
    }
  }
  return "";
}

absl::StatusOr<moe::v1::JobSpec> LoadSpec(const WorkerFlags& f) {
  if (!f.job_yaml.empty()) return moe::LoadJobSpec(f.job_yaml);
  absl::StatusOr<std::string> text = moe::ReadFile(f.spec_json);
  if (!text.ok()) return text.status();
  moe::v1::JobSpec spec;
  auto st = google::protobuf::util::JsonStringToMessage(*text, &spec);
  if (!st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(f.spec_json, ": not a JobSpec in JSON: ", st.ToString()));
  }
  std::vector<moe::SpecError> errors = moe::ValidateJobSpec(spec);
  if (!errors.empty()) return absl::InvalidArgumentError(moe::FormatSpecErrors(errors));
  return spec;
}

int LocalRanks() {
  const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  int n = 1;
  if (s != nullptr && absl::SimpleAtoi(s, &n) && n > 0) return n;
  return 1;
}

// "this machine has 23.4 GiB, ulimit -v 1.5 GiB": the host memory a process can have.
std::string HostMemory() {
  const double ram = static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                     static_cast<double>(sysconf(_SC_PAGESIZE));
  std::string machine = absl::StrCat("this machine has ", moe::FormatBytes(ram));
  rlimit as{};
  if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) {
    absl::StrAppend(&machine, ", ulimit -v ", moe::FormatBytes(static_cast<double>(as.rlim_cur)));
  }
  return machine;
}

// Runs fn; a failed allocation inside it (an AllocationError, any other std::bad_alloc, or a size
// past what memory can address) becomes the status why(error) makes of it: the reason in words
// and exit 1, not an abort by signal 6. what_failed names the allocation a bare bad_alloc was.
template <typename Fn, typename Why>
auto OnAllocationFailure(const char* what_failed, Fn&& fn, Why&& why) -> decltype(fn()) {
  try {
    return fn();
  } catch (const moe::AllocationError& e) {
    return why(e);
  } catch (const std::bad_alloc&) {
    return why(moe::AllocationError(what_failed));
  } catch (const std::length_error& e) {
    return why(moe::AllocationError(
        absl::StrCat("could not allocate a buffer larger than memory can address (", e.what(), ")")));
  }
}

// --sample, --score and --export build a checkpoint's model: one larger than this machine (or its
// ulimit -v, or the GPU) holds ends with the reason.
template <typename Fn>
auto CatchOutOfMemory(const std::string& checkpoint, Fn&& fn) -> decltype(fn()) {
  return OnAllocationFailure("could not allocate memory for the checkpoint's model", fn,
                             [&](const moe::AllocationError& e) {
                               return absl::ResourceExhaustedError(absl::StrCat(
                                   e.what(), " (checkpoint ", checkpoint, "; ", HostMemory(),
                                   "); free memory, raise ulimit -v, or run it where the model fits"));
                             });
}

// Why a rank ran out of memory, in one line for moed's FAILED reason (it keeps the first 500
// characters of a rank's last stderr line): which memory (GPU or host), what could not be
// allocated and in which step, the job's estimate (what moectl validate prints) against this
// machine or GPU, and what to change.
std::string OutOfMemoryReason(const moe::AllocationError& e, moe::v1::JobSpec spec, int vocab_size) {
  spec.mutable_model()->set_vocab_size(vocab_size);
  const moe::ModelStats stats = moe::ComputeModelStats(spec);
  if (e.memory() == moe::AllocationError::Memory::kGpu) {
    std::string out = absl::StrCat(e.what(), " (the job needs about ",
                                   moe::FormatBytes(static_cast<double>(stats.total_bytes)),
                                   " per GPU by moectl validate's estimate)");
    std::vector<std::string> levers;
    if (e.capacity_bytes() > 0) {
      for (const moe::MemoryLever& l : moe::CheckGpuFit(spec, e.capacity_bytes()).levers) {
        levers.push_back(absl::StrCat(l.change, " (-", moe::FormatBytes(static_cast<double>(l.saving)),
                                      l.note.empty() ? "" : "; ", l.note, ")"));
      }
    }
    absl::StrAppend(&out, levers.empty() ? "; make the model or train.batch_size smaller, or use more GPUs"
                                         : absl::StrCat("; try ", absl::StrJoin(levers, ", ")));
    return out;
  }
  return absl::StrCat(e.what(), " (the job needs about ",
                      moe::FormatBytes(static_cast<double>(stats.total_bytes)),
                      " per rank; ", HostMemory(),
                      "); make the model smaller (model.d_model, n_layers, moe.expert_hidden), "
                      "lower train.batch_size or use more ranks");
}

// --score, --sample and --export: exit 2 for the caller's input (moe::IsUsageError: a value, a
// checkpoint argument that names none, outputs that clash, an --out whose parent is missing), as
// for the flags' own errors; 1 for a failure while running.
int FailCheckpointTool(const absl::Status& status) {
  std::fprintf(stderr, "moe-worker: %s\n", std::string(status.message()).c_str());
  return moe::IsUsageError(status) ? 2 : 1;
}

// OpenMP's threads wait for the next parallel region by spinning (libgomp: 300,000 spins) before
// they sleep. When another process holds a core, the spinning thread takes the time the thread it
// waits for needs: --sample of the CPU demo on a busy 2-core machine made 14 to 280 tokens/s, 700
// to 1,400 with passive waiting. libgomp reads its environment once, in its constructor before
// main (a setenv in .preinit_array is undone by libc's own start), so --sample and --score, whose
// regions are tiny, run again with OMP_WAIT_POLICY=passive when the user set neither it nor
// GOMP_SPINCOUNT. If the exec fails they go on as they are.
void ExecWithPassiveOpenMpWait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "passive", 0) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OMP_WAIT_POLICY");
}

}  // namespace

int main(int argc, char** argv) {
  WorkerFlags flags;
  if (std::string err = ParseFlags(argc, argv, &flags); !err.empty()) {
    // The whole usage only for a bare command; a wrong flag gets its error and where the list is.
    if (argc <= 1) {
      std::fprintf(stderr, "moe-worker: %s\n%s", err.c_str(), kUsage);
    } else {
      std::fprintf(stderr, "moe-worker: %s (moe-worker --help lists the flags)\n", err.c_str());
    }
    return 2;
  }
  // Checkpoints and token caches hold the job's data: for the job's owner alone.
  umask(077);
  // --sample and --score run the model on this process's CPU threads: --threads N (0 or none: the
  // machine's cores), as training does (they took OpenMP's and OpenBLAS's defaults, whatever N).
  if (!flags.score_checkpoint.empty() || flags.sampling) {
    ExecWithPassiveOpenMpWait(argv);
    moe::kernels::SetNumThreads(flags.threads);
  }
  if (!flags.score_checkpoint.empty()) {
    absl::StatusOr<double> ce = CatchOutOfMemory(flags.score_checkpoint, [&] {
      return moe::ScoreCheckpoint(flags.score_checkpoint, flags.batch_out, flags.score_extras);
    });
    if (!ce.ok()) return FailCheckpointTool(ce.status());
    std::printf("{\"ce\": %.9g, \"batch\": \"%s\"}\n", *ce, flags.batch_out.c_str());
    return 0;
  }
  if (!flags.export_checkpoint.empty()) {
    moe::HfExportOptions opts;
    opts.dtype = *moe::ParseExportDtype(flags.export_dtype);
    absl::StatusOr<moe::HfExportResult> r = CatchOutOfMemory(flags.export_checkpoint, [&] {
      return moe::ExportHf(flags.export_checkpoint, flags.export_out, opts);
    });
    if (!r.ok()) return FailCheckpointTool(r.status());
    std::printf("%s", moe::DescribeExport(*r, flags.export_out).c_str());
    return 0;
  }
  if (flags.sampling) {
    // The prompt (once the checkpoint and the prompt are accepted), then each token as it comes;
    // the speed on stderr.
    flags.sample.on_ready = [&] {
      std::printf("%s", flags.sample.prompt.c_str());
      std::fflush(stdout);
    };
    int produced = 0;
    std::chrono::steady_clock::time_point first, last;  // the first and the last token's arrival
    flags.sample.on_token = [&](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      last = std::chrono::steady_clock::now();
      if (produced++ == 0) first = last;
    };
    std::string device;
    flags.sample.device_used = &device;
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<std::string> text =
        CatchOutOfMemory(flags.sample.checkpoint, [&] { return moe::GenerateText(flags.sample); });
    if (!text.ok()) return FailCheckpointTool(text.status());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("\n");
    // Generation speed: the tokens after the first over the time since it came (loading the
    // model and reading the prompt excluded).
    const double gen = std::chrono::duration<double>(last - first).count();
    std::fprintf(stderr, "moe-worker: %d tokens in %.2f s, %.1f tokens/s after the first, on %s with %s, %d CPU thread(s)\n",
                 produced, seconds, gen > 0 ? (produced - 1) / gen : 0.0, device.c_str(),
                 flags.sample.kv_cache ? "a kv cache" : "no kv cache", moe::kernels::NumThreads());
    return 0;
  }

  absl::StatusOr<moe::v1::JobSpec> spec = LoadSpec(flags);
  if (!spec.ok()) {
    std::fprintf(stderr, "moe-worker: invalid job:\n%s\n", std::string(spec.status().message()).c_str());
    return 2;
  }
  moe::InstallSignalHandlers();
  moe::CommOptions comm_opts;
  comm_opts.timeout_seconds = flags.comm_timeout_s;
  std::unique_ptr<moe::Communicator> comm = moe::CreateMpiCommunicator(comm_opts);
  const int rank = comm->rank(), world = comm->world_size();
  auto fail = [&](const std::string& msg) {
    std::fprintf(stderr, "moe-worker rank %d: %s\n", rank, msg.c_str());
    return 1;
  };
  if (world != spec->resources().ranks()) {
    return fail(absl::StrCat("the job asks for resources.ranks = ", spec->resources().ranks(), " but ", world,
                             " ranks were started; run it with mpirun -np ", spec->resources().ranks()));
  }
  int threads = spec->resources().threads_per_rank();
  if (flags.threads > 0) threads = flags.threads;
  if (threads <= 0) threads = std::max(1, static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)) / LocalRanks());
  moe::kernels::SetNumThreads(threads);

  moe::ReporterOptions ropts;
  ropts.moed_address = flags.moed;
  ropts.job_id = flags.job_id;
  ropts.rank = rank;
  ropts.world_size = world;
  ropts.attempt = flags.attempt;
  if (!flags.attempt_dir.empty()) ropts.spill_path = moe::MetricsSpillPath(flags.attempt_dir, rank);
  std::unique_ptr<moe::Reporter> reporter = moe::Reporter::Create(ropts);

  // The same path policy moed applied at submit (its roots come in MOE_DATA_ROOTS and
  // MOE_CHECKPOINT_ROOTS), again here where the files are opened, symlinks resolved now.
  const moe::PathPolicy policy = moe::PathPolicy::FromEnvironment();
  if (absl::Status st = moe::CheckSpecPaths(policy, *spec); !st.ok()) {
    return fail(std::string(st.message()));
  }
  // The checkpoint directory checkpoint.dir (checked above) does not name: the default, or one
  // given by hand (moed passes its own job folder's, which it chose, with --job-id).
  std::string unchecked_dir, unchecked_field = "checkpoint directory";
  if (flags.checkpoint_dir.empty()) {
    if (spec->checkpoint().dir().empty()) unchecked_dir = "checkpoints/" + spec->name();
  } else if (flags.job_id.empty()) {
    unchecked_dir = flags.checkpoint_dir;
    unchecked_field = "--checkpoint-dir";
  }
  if (!flags.no_checkpoint && !unchecked_dir.empty()) {
    if (absl::Status st = moe::CheckCheckpointPath(policy, unchecked_field, unchecked_dir); !st.ok()) {
      return fail(std::string(st.message()));
    }
  }
  // Rank 0 logs the preparation (a long tokenization says so); a stop during it ends the job as
  // stopped, every rank agreeing, with nothing to checkpoint.
  absl::StatusOr<moe::Dataset> data = moe::PrepareData(spec->data(), comm.get(), [&](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    reporter->Log(line);
  });
  if (absl::IsCancelled(data.status())) {
    reporter->Close();
    return 143;
  }
  // A failure from here on ends the whole job: the reason first, then (world > 1) an abort, or the
  // peers would wait for this rank in their next collective until --comm-timeout.
  auto fail_job = [&](const std::string& msg) {
    fail(msg);
    reporter->Close();
    if (world > 1) comm->Abort(1);
    return 1;
  };
  if (!data.ok()) {
    // This rank's alone, perhaps (the text missing on its node): its peers wait for it in
    // PrepareData's agreement.
    return fail_job(absl::StrCat("cannot load data: ", data.status().message()));
  }
  if (absl::Status st = moe::CheckSplits(*data, spec->model().seq_len()); !st.ok()) {
    return fail_job(std::string(st.message()));
  }
  if (spec->model().vocab_size() > 0 && data->vocab_size > spec->model().vocab_size()) {
    return fail_job(absl::StrCat("model.vocab_size is ", spec->model().vocab_size(), " but the data has ",
                                 data->vocab_size, " token ids; raise model.vocab_size to at least ", data->vocab_size,
                                 spec->data().tokenizer() == moe::v1::TOKENIZER_PRETOKENIZED
                                     ? " (pretokenized data needs it set)"
                                     : " or leave it out (then the tokenizer's vocabulary is used)"));
  }

  moe::TrainerOptions topts;
  if (!flags.no_checkpoint) {  // --no-checkpoint: an empty directory, the trainer writes none
    topts.checkpoint_dir = flags.checkpoint_dir;
    if (topts.checkpoint_dir.empty()) topts.checkpoint_dir = spec->checkpoint().dir();
    if (topts.checkpoint_dir.empty()) topts.checkpoint_dir = "checkpoints/" + spec->name();
  }
  topts.resume = flags.resume;
  // The checkpoint directory's owner: moed's job (its id and folder, which is unique to one moed)
  // or, run by hand, the job's name.
  if (!flags.job_id.empty()) {
    std::error_code ec;
    const std::string folder =
        std::filesystem::absolute(flags.spec_json, ec).lexically_normal().parent_path().string();
    topts.checkpoint_owner = absl::StrCat("job ", flags.job_id, " of ", folder);
  } else {
    topts.checkpoint_owner = absl::StrCat("standalone job ", spec->name());
  }
  topts.max_steps = flags.max_steps;
  topts.on_metrics = [&](const moe::v1::MetricPoint& p) { reporter->Metrics(p); };
  topts.on_log = [&](const std::string& line) { reporter->Log(line); };
  topts.on_step = [&](int64_t step) { reporter->SetStep(step); };
  // The model's vocabulary (model.vocab_size when given: it may exceed the data's ids).
  const int model_vocab = moe::ModelConfig::FromSpec(*spec, data->vocab_size).vocab;
  if (rank == 0) {
    std::string line = absl::StrCat("moe-worker: job ", spec->name(), ", ", world, " rank(s), ", threads,
                                    " thread(s) per rank, data ", data->source, ", vocab ", model_vocab,
                                    ", checkpoints ",
                                    flags.no_checkpoint ? "none (--no-checkpoint)" : "in " + topts.checkpoint_dir);
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    reporter->Log(line);
  }
  // A shape that passed validation can still be more than this machine holds: the allocation
  // failure ends the rank with the reason in words (exit 1), not an abort by signal 6.
  moe::TrainOutcome outcome = moe::TrainOutcome::kFinished;
  const absl::Status st = OnAllocationFailure(
      "could not allocate memory for the model's buffers",
      [&] {
        absl::StatusOr<std::unique_ptr<moe::Trainer>> trainer =
            moe::Trainer::Create(*spec, comm.get(), &*data, topts);
        return trainer.ok() ? (*trainer)->Run(&outcome) : trainer.status();
      },
      [&](const moe::AllocationError& e) {
        return absl::ResourceExhaustedError(OutOfMemoryReason(e, *spec, model_vocab));
      });
  reporter->Close();
  if (!st.ok()) {
    fail(std::string(st.message()));
    // The failure may be this rank's alone (its memory, its GPU): its peers would wait for it in
    // their next collective. The whole job ends now, with this rank's line as the reason.
    if (world > 1) comm->Abort(1);
    return 1;
  }
  return outcome == moe::TrainOutcome::kStopped ? 143 : 0;
}
