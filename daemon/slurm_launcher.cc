// SlurmLauncher: template rendering, sbatch/scontrol/sacct/scancel calls, and the mapping from
// Slurm's job states to ProcessState. The handle is "slurm=<id> base=<attempt> dir=<job dir>".
#include "daemon/slurm_launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "common/sbatch_options.h"
#include "daemon/local_launcher.h"

extern char** environ;

namespace moe::daemon {
namespace {

using Clock = std::chrono::steady_clock;

struct Handle {
  std::string id;  // Slurm's job id
  int base = 0;    // moed's attempt when it was submitted
  std::string dir;  // the job's folder
};

std::string FormatHandle(const Handle& h) {
  return absl::StrCat("slurm=", h.id, " base=", h.base, " dir=", h.dir);
}

Handle ParseHandle(const std::string& s) {
  Handle h;
  for (absl::string_view part : absl::StrSplit(s, ' ', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&part, "slurm=")) {
      h.id = std::string(part);
    } else if (absl::ConsumePrefix(&part, "base=")) {
      (void)absl::SimpleAtoi(part, &h.base);
    } else if (absl::ConsumePrefix(&part, "dir=")) {
      // The directory is last and may hold spaces.
      h.dir = s.substr(s.find(" dir=") + 5);
      break;
    }
  }
  return h;
}

struct CommandOutput {
  int exit_code = -1;  // -1: could not run, or killed by the timeout
  std::string out;     // stdout and stderr together
};

// Runs argv (PATH lookup) with extra environment entries, capturing its output; kills it after
// timeout_s. The child keeps none of moed's descriptors.
CommandOutput RunCommand(const std::vector<std::string>& args,
                         const std::vector<std::string>& extra_env, double timeout_s) {
  CommandOutput result;
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    bool replaced = false;
    for (const std::string& x : extra_env) {
      if (std::strncmp(*e, x.c_str(), x.find('=') + 1) == 0) replaced = true;
    }
    if (!replaced) env.emplace_back(*e);
  }
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<std::string> argv_store = args;
  std::vector<char*> argv, envp;
  for (std::string& a : argv_store) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    result.out = absl::StrCat("pipe: ", std::strerror(errno));
    return result;
  }
  pid_t pid = fork();
  if (pid < 0) {
    result.out = absl::StrCat("fork: ", std::strerror(errno));
    close(fds[0]);
    close(fds[1]);
    return result;
  }
  if (pid == 0) {
    int null_fd = open("/dev/null", O_RDONLY);
    dup2(null_fd, 0);
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    syscall(SYS_close_range, 3U, ~0U, 0U);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execvpe(argv[0], argv.data(), envp.data());
    // 127: not found, 126: found but cannot run (a shell's codes).
    if (errno == ENOENT) {
      const char msg[] = "exec failed: not found on PATH\n";
      (void)!write(2, msg, sizeof(msg) - 1);
      _exit(127);
    }
    const char msg[] = "exec failed: cannot be run\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(126);
  }
  close(fds[1]);
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  bool timed_out = false;
  char buf[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p = {fds[0], POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (result.out.size() < (1 << 20)) result.out.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    absl::StrAppend(&result.out, "\n(killed after ", timeout_s, " s)");
    return result;
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string OneLine(absl::string_view text) {
  std::string s = absl::StrReplaceAll(absl::StripAsciiWhitespace(text), {{"\n", "; "}});
  if (s.size() > 400) s = s.substr(0, 400) + "...";
  return s;
}

// A word for the shell: single-quoted, with ' written as '\''.
std::string ShellQuote(absl::string_view s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

// A value that goes into an sbatch option: no whitespace or control characters.
absl::Status CheckOptionValue(const std::string& field, const std::string& value) {
  for (char c : value) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) ||
        absl::ascii_iscntrl(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "launch error: ", field, " '", OneLine(value),
          "' holds a space or control character, which sbatch cannot take"));
    }
  }
  return absl::OkStatus();
}

// `Key=value` from one line of `scontrol show job -o`; "" when absent. Split by hand: the line
// holds what the job's options say (a --comment of any length), no input for std::regex.
std::string Field(const std::string& line, const std::string& key) {
  for (absl::string_view word :
       absl::StrSplit(line, absl::ByAnyChar(" \t\r\n"), absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&word, key) && absl::ConsumePrefix(&word, "=")) return std::string(word);
  }
  return "";
}

// Whether PATH (as execvpe searches it) holds an executable file `tool`.
// A tool a batch job needs, found on PATH as execvp finds it.
bool OnPath(const std::string& tool) { return !ResolveOnPath(tool).empty(); }

// What is missing, what each tool is for, and how to get them.
std::string MissingToolsAdvice(const std::vector<std::string>& missing) {
  const char* path = std::getenv("PATH");
  return absl::StrCat(
      "Slurm's ", absl::StrJoin(missing, " and "), missing.size() == 1 ? " is" : " are",
      " not on moed's PATH (", OneLine(path != nullptr ? path : ""),
      "): launcher slurm needs sbatch to submit a job, scontrol to release, follow and (in the "
      "batch script, at the time limit) requeue it, and scancel to cancel it; install Slurm's "
      "client tools (Debian: slurm-client) or start moed with their folder on PATH "
      "(deploy/slurm/moed-slurm.conf sets it under systemd)");
}

// A file name pattern for sbatch (--output) that names `path` itself: sbatch expands %j, %x, ...
// in it and writes %% as one %. A backslash cannot be written: Slurm drops every '\' from the
// name and then expands nothing (not even the %j after it), so such a path is refused.
absl::StatusOr<std::string> SbatchFileNamePattern(const std::string& field,
                                                  const std::string& path) {
  if (absl::StrContains(path, '\\')) {
    return absl::InvalidArgumentError(absl::StrCat(
        "launch error: ", field, " '", OneLine(path), "' holds a backslash, which Slurm drops from "
        "output file names (and then expands no %j), so the batch output would land elsewhere; "
        "start moed with a --state-dir whose path has no '\\'"));
  }
  return absl::StrReplaceAll(path, {{"%", "%%"}});
}

// "rc:sig" -> rc, sig.
void ParseExitCode(const std::string& text, int* rc, int* sig) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  *rc = 0;
  *sig = 0;
  if (!parts.empty()) (void)absl::SimpleAtoi(parts[0], rc);
  if (parts.size() > 1) (void)absl::SimpleAtoi(parts[1], sig);
}

}  // namespace

bool IsFinalSlurmState(const std::string& state) {
  // Not SPECIAL_EXIT: Slurm requeued that job and holds it (RequeueExitHold, or an epilog set it)
  // until someone releases it; it is still in the queue.
  static const std::set<std::string> kFinal = {
      "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED",
      "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT"};
  return kFinal.count(state) > 0;
}

bool SlurmJobInfo::pending() const {
  // CONFIGURING: its nodes boot (power saving, a reboot for features); nothing of it runs yet.
  // RESV_DEL_HOLD: held because its reservation was deleted. SPECIAL_EXIT: requeued and held after
  // it exited with a special code (moed counted it as ended while Slurm still had it).
  return state == "PENDING" || state == "REQUEUED" || state == "REQUEUE_HOLD" ||
         state == "REQUEUE_FED" || state == "SUSPENDED" || state == "CONFIGURING" ||
         state == "RESV_DEL_HOLD" || state == "SPECIAL_EXIT";
}

bool SlurmJobInfo::paused() const { return state == "SUSPENDED" || state == "STOPPED"; }

SlurmLauncher::SlurmLauncher(SlurmLauncherOptions options) : options_(std::move(options)) {
  // sbatch without the others: jobs would be submitted, then never released, followed or requeued.
  // Without sbatch this is no Slurm host; a slurm job's launch error says what is missing.
  const std::vector<std::string> missing = MissingTools();
  if (!missing.empty() && missing.front() != "sbatch") {
    std::fprintf(stderr, "moed: warning: %s; until then jobs with launcher slurm are refused\n",
                 MissingToolsAdvice(missing).c_str());
  }
}

std::vector<std::string> SlurmLauncher::MissingTools() {
  std::vector<std::string> missing;
  for (const char* tool : {"sbatch", "scontrol", "scancel"}) {
    if (!OnPath(tool)) missing.emplace_back(tool);
  }
  return missing;
}

bool SlurmLauncher::IsSlurmHandle(const std::string& handle) {
  return absl::StartsWith(handle, "slurm=");
}

void SlurmLauncher::Describe(const std::string& handle, moe::v1::Job* view) const {
  if (!IsSlurmHandle(handle)) return;
  Handle h = ParseHandle(handle);
  view->set_slurm_job_id(h.id);
  absl::StatusOr<std::string> nodes = ReadFile(absl::StrCat(h.dir, "/slurm-", h.id, ".nodes"));
  if (nodes.ok()) view->set_node_list(std::string(absl::StripAsciiWhitespace(*nodes)));
}

BatchJob SlurmLauncher::BatchJobOf(const std::string& handle) const {
  if (!IsSlurmHandle(handle)) return {};
  return {"Slurm", ParseHandle(handle).id};
}

absl::StatusOr<std::vector<std::string>> SlurmLauncher::SbatchArgs(const LaunchRequest& req) {
  const moe::v1::ResourceSpec& r = req.spec.resources();
  const moe::v1::SlurmSpec& sl = r.slurm();
  // The job's own options come first, each on the allowlist, and moed's after them: for an
  // option given twice sbatch takes the last, so none of the job's can override moed's.
  std::vector<std::string> args;
  for (int i = 0; i < sl.extra_sbatch_args_size(); ++i) {
    const std::string& a = sl.extra_sbatch_args(i);
    if (std::string why = RefusedSbatchOption(a); !why.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("launch error: resources.slurm.extra_sbatch_args[", i, "]: ", why));
    }
    args.push_back(a);
  }
  // --chdir is a plain path; --output is a file name pattern (a state dir with % in it wrote the
  // batch output somewhere else).
  absl::StatusOr<std::string> job_dir = SbatchFileNamePattern("job folder", req.job_dir);
  if (!job_dir.ok()) return job_dir.status();
  args.insert(args.end(),
              {"--parsable", absl::StrCat("--job-name=moe-", req.job_id, "-", req.spec.name()),
               absl::StrCat("--output=", *job_dir, "/slurm-%j.out"),
               absl::StrCat("--chdir=", req.job_dir), "--export=ALL"});
  if (!sl.partition().empty()) {
    if (absl::Status s = CheckOptionValue("resources.slurm.partition", sl.partition()); !s.ok()) {
      return s;
    }
    args.push_back(absl::StrCat("--partition=", sl.partition()));
  }
  if (!sl.account().empty()) {
    if (absl::Status s = CheckOptionValue("resources.slurm.account", sl.account()); !s.ok()) {
      return s;
    }
    args.push_back(absl::StrCat("--account=", sl.account()));
  }
  const int nodes = std::max(1, sl.nodes());
  const int per_node = sl.ranks_per_node() > 0 ? sl.ranks_per_node() : (r.ranks() + nodes - 1) / nodes;
  if (nodes * per_node != r.ranks()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "launch error: resources.slurm.nodes (", nodes, ") x ranks_per_node (", per_node,
        ") is not resources.ranks (", r.ranks(), ")"));
  }
  args.push_back(absl::StrCat("--nodes=", nodes));
  args.push_back(absl::StrCat("--ntasks=", r.ranks()));
  args.push_back(absl::StrCat("--ntasks-per-node=", per_node));
  if (sl.gpus_per_node() > 0) args.push_back(absl::StrCat("--gpus-per-node=", sl.gpus_per_node()));
  if (r.threads_per_rank() > 0) args.push_back(absl::StrCat("--cpus-per-task=", r.threads_per_rank()));
  if (!sl.time_limit().empty()) {
    if (absl::Status s = CheckOptionValue("resources.slurm.time_limit", sl.time_limit()); !s.ok()) {
      return s;
    }
    args.push_back(absl::StrCat("--time=", sl.time_limit()));
  }
  return args;
}

namespace {

// Why the batch template cannot be read, with the fix; OK with its text.
absl::StatusOr<std::string> ReadTemplate(const std::string& path) {
  absl::StatusOr<std::string> tmpl = ReadFile(path);
  if (!tmpl.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read the Slurm batch template (", tmpl.status().message(), ")",
        " (start moed with --slurm-template FILE, e.g. deploy/slurm/moe-job.sbatch.tmpl of moe's source)"));
  }
  return tmpl;
}

}  // namespace

absl::Status SlurmLauncher::CheckCanLaunch() const {
  absl::StatusOr<std::string> tmpl = ReadTemplate(options_.template_path);
  if (!tmpl.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("resources.launcher: slurm jobs cannot run on this moed: ", tmpl.status().message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> SlurmLauncher::Render(const LaunchRequest& req) const {
  absl::StatusOr<std::string> tmpl = ReadTemplate(options_.template_path);
  if (!tmpl.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("launch error: ", tmpl.status().message()));
  }
  if (options_.mpi != "pmix" && options_.mpi != "mpirun") {
    return absl::InvalidArgumentError(absl::StrCat(
        "launch error: Slurm MPI mode '", options_.mpi, "' is neither pmix nor mpirun"));
  }
  const std::string address =
      options_.report_address.empty() ? req.moed_address : options_.report_address;
  const std::map<std::string, std::string> values = {
      {"{{JOB_ID}}", ShellQuote(req.job_id)},
      {"{{JOB_DIR}}", ShellQuote(req.job_dir)},
      {"{{SPEC}}", ShellQuote(req.spec_path)},
      {"{{CHECKPOINT_DIR}}", ShellQuote(req.checkpoint_dir)},
      {"{{WORKER}}", ShellQuote(options_.worker_bin)},
      {"{{MOED_ADDRESS}}", ShellQuote(address)},
      {"{{MPI}}", options_.mpi},
      {"{{MPIRUN}}", ShellQuote(options_.mpirun)},
      {"{{ATTEMPT}}", absl::StrCat(req.attempt)},
  };
  std::string out;
  absl::string_view rest = *tmpl;
  while (true) {
    size_t open = rest.find("{{");
    if (open == absl::string_view::npos) break;
    size_t close = rest.find("}}", open);
    if (close == absl::string_view::npos) break;
    std::string key(rest.substr(open, close + 2 - open));
    auto it = values.find(key);
    if (it == values.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "launch error: the Slurm batch template ", options_.template_path,
          " holds an unknown placeholder ", key, " (known: JOB_ID, JOB_DIR, SPEC, CHECKPOINT_DIR, "
          "WORKER, MOED_ADDRESS, MPI, MPIRUN, ATTEMPT)"));
    }
    absl::StrAppend(&out, rest.substr(0, open), it->second);
    rest.remove_prefix(close + 2);
  }
  absl::StrAppend(&out, rest);
  return out;
}

absl::StatusOr<std::string> SlurmLauncher::Launch(const LaunchRequest& req,
                                                  const RecordLaunch& record) {
  // Before sbatch: a job submitted without scontrol would wait held forever (nothing releases
  // it), and would neither be followed nor requeue itself at its time limit.
  if (const std::vector<std::string> missing = MissingTools(); !missing.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("launch error: ", MissingToolsAdvice(missing)));
  }
  if (access(options_.worker_bin.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("launch error: worker executable ", options_.worker_bin,
                     " is missing or not executable (build moe-worker or pass moed --worker-bin; "
                     "it must be at that path on every node)"));
  }
  absl::StatusOr<std::vector<std::string>> args = SbatchArgs(req);
  if (!args.ok()) return args.status();
  absl::StatusOr<std::string> script = Render(req);
  if (!script.ok()) return script.status();
  if (absl::Status s = MakeDirs(req.checkpoint_dir); !s.ok()) return s;
  const std::string path = absl::StrCat(req.job_dir, "/attempt-", req.attempt, ".sbatch");
  if (absl::Status s = WriteFileAtomic(path, *script); !s.ok()) {
    return absl::InternalError(absl::StrCat("launch error: cannot write ", path, ": ", s.message()));
  }
  // --hold: the job waits in Slurm until its handle is stored (then scontrol release), so a moed
  // that dies in between never leaves an attempt running that it does not know.
  std::vector<std::string> argv = {"sbatch", "--hold"};
  argv.insert(argv.end(), args->begin(), args->end());
  argv.push_back(path);
  std::vector<std::string> env;
  if (!req.token.empty()) env.push_back(absl::StrCat("MOE_TOKEN=", req.token));
  if (!req.report_secret.empty()) {
    env.push_back(absl::StrCat("MOE_REPORT_SECRET=", req.report_secret));
  }
  CommandOutput r = RunCommand(argv, env, options_.command_timeout_s);
  if (r.exit_code != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("launch error: sbatch ", r.exit_code == 127 ? "not found on PATH" : "failed",
                     ": ", OneLine(r.out)));
  }
  // --parsable prints "<id>" or "<id>;<cluster>" (warnings may come first); a site's sbatch
  // wrapper may print "Submitted batch job <id>" all the same (moed once left that job held).
  std::string id;
  for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    (void)absl::ConsumePrefix(&line, "Submitted batch job ");
    std::string first(line.substr(0, line.find(';')));
    uint64_t n;
    if (absl::SimpleAtoi(first, &n)) id = first;
  }
  if (id.empty()) {
    return absl::InternalError(absl::StrCat(
        "launch error: sbatch printed no job id: ", OneLine(r.out),
        " (if it queued the job anyway, it waits held: squeue --name=moe-", req.job_id, "-",
        req.spec.name(), ", then scancel it)"));
  }
  Handle h{id, req.attempt, req.job_dir};
  const std::string handle = FormatHandle(h);
  if (absl::Status s = record(handle); !s.ok()) {
    RunCommand({"scancel", id}, {}, options_.command_timeout_s);
    return s;
  }
  CommandOutput rel = RunCommand({"scontrol", "release", id}, {}, options_.command_timeout_s);
  if (rel.exit_code != 0) {
    // Stored already: the scheduler sees it held in Slurm's queue; say why in moed's log.
    std::fprintf(stderr, "moed: scontrol release of Slurm job %s failed: %s\n", id.c_str(),
                 OneLine(rel.out).c_str());
  }
  return handle;
}

SlurmLauncher::Cached SlurmLauncher::Refresh(const std::string& handle, bool force) {
  const Handle h = ParseHandle(handle);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(h.id);
    if (it != cache_.end() && !force && Clock::now() - it->second.refreshed < options_.refresh) {
      return it->second;
    }
    // A final state does not change any more.
    if (it != cache_.end() && IsFinalSlurmState(it->second.info.state)) return it->second;
  }
  Cached c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = cache_.find(h.id); it != cache_.end()) c = it->second;
  }
  c.info.slurm_job_id = h.id;
  c.refreshed = Clock::now();
  CommandOutput r = RunCommand({"scontrol", "show", "job", "-o", h.id}, {}, options_.command_timeout_s);
  const std::string line = r.out.substr(0, r.out.find('\n'));
  if (r.exit_code == 0 && !Field(line, "JobState").empty()) {
    c.info.known = true;
    c.info.state = Field(line, "JobState");
    c.info.reason = Field(line, "Reason");
    c.info.node_list = Field(line, "NodeList");
    if (c.info.node_list == "(null)") c.info.node_list.clear();
    int restarts = 0;
    (void)absl::SimpleAtoi(Field(line, "Restarts"), &restarts);
    c.info.attempt = h.base + restarts;
    ParseExitCode(Field(line, "ExitCode"), &c.exit_code, &c.term_signal);
  } else if (absl::StrContains(r.out, "Invalid job id")) {
    // Gone from slurmctld's memory (MinJobAge passed, or the controller lost its state):
    // accounting may know it; else the exit status the batch script wrote.
    CommandOutput a = RunCommand({"sacct", "-n", "-X", "-P", "-j", h.id, "-o",
                                  "State,ExitCode,NodeList,Restarts"},
                                 {}, options_.command_timeout_s);
    std::vector<std::string> f = absl::StrSplit(a.out.substr(0, a.out.find('\n')), '|');
    if (a.exit_code == 0 && f.size() >= 3 && !f[0].empty() &&
        !absl::StrContains(a.out, "disabled")) {
      c.info.known = true;
      c.info.state = f[0].substr(0, f[0].find(' '));  // "CANCELLED by 0"
      c.info.reason.clear();
      c.info.node_list = f[2];
      ParseExitCode(f[1], &c.exit_code, &c.term_signal);
    } else {
      // The exit status the batch script wrote into its newest attempt folder.
      int attempt = std::max(c.info.attempt, h.base);
      while (access(AttemptDir(h.dir, attempt + 1).c_str(), F_OK) == 0) ++attempt;
      absl::StatusOr<std::string> st =
          ReadFile(AttemptDir(h.dir, attempt) + "/exit_status");
      const std::string text(st.ok() ? absl::StripAsciiWhitespace(*st) : "");
      int rc = 0;
      c.info.attempt = attempt;
      c.info.reason.clear();
      if (st.ok() && text != "requeued" && absl::SimpleAtoi(text, &rc)) {
        c.info.state = rc == 0 ? "COMPLETED" : "FAILED";
        c.exit_code = rc;
        c.term_signal = 0;
      } else {
        c.info.state = "UNKNOWN";  // nothing says how it ended, and nothing of it runs
      }
      c.info.known = true;
    }
  } else if (r.exit_code == 127 && !OnPath("scontrol")) {
    // Nothing can follow the job (moed restarted without Slurm on PATH): say so once; it counts
    // as running until its ranks go silent.
    if (!c.said_scontrol_missing) {
      std::fprintf(stderr, "moed: error: Slurm job %s cannot be followed: %s\n", h.id.c_str(),
                   MissingToolsAdvice({"scontrol"}).c_str());
      c.said_scontrol_missing = true;
    }
  } else {
    // slurmctld unreachable or slow: keep what we knew, try again after refresh.
    std::fprintf(stderr, "moed: slurm job %s: scontrol failed: %s\n", h.id.c_str(),
                 OneLine(r.out).c_str());
  }
  std::lock_guard<std::mutex> lock(mu_);
  cache_[h.id] = c;
  return c;
}

SlurmJobInfo SlurmLauncher::Info(const std::string& handle) {
  return Refresh(handle, /*force=*/false).info;
}

BatchState SlurmLauncher::BatchStateOf(const std::string& handle) {
  const SlurmJobInfo info = Info(handle);
  BatchState b;
  b.known = info.known;
  b.state = info.state;
  b.reason = info.reason == "None" ? "" : info.reason;
  if (info.state == "SPECIAL_EXIT") {
    // Held until someone acts: say who can.
    absl::StrAppend(&b.reason, b.reason.empty() ? "" : "; ",
                    "requeued and held after a special exit code; `scontrol release ",
                    info.slurm_job_id, "` runs it again, moectl cancel ends it");
  }
  b.node_list = info.node_list;
  b.attempt = info.attempt;
  b.pending = info.pending();
  b.paused = info.paused();
  return b;
}

ProcessState SlurmLauncher::Poll(const std::string& handle) {
  ProcessState ps;
  if (!IsSlurmHandle(handle)) {
    ps.kind = ProcessState::kLost;
    ps.reason = "no record of the Slurm job (moed stopped while submitting it)";
    return ps;
  }
  const Cached c = Refresh(handle, /*force=*/false);
  const SlurmJobInfo& info = c.info;
  if (!info.known || !(IsFinalSlurmState(info.state) || info.state == "UNKNOWN")) return ps;
  const Handle h = ParseHandle(handle);
  if (info.state == "UNKNOWN") {
    ps.kind = ProcessState::kLost;
    ps.reason = absl::StrCat("Slurm job ", h.id,
                             " is no longer known to Slurm (scontrol, sacct) and left no exit "
                             "status");
    return ps;
  }
  ps.kind = ProcessState::kExited;
  ps.exit_code = c.exit_code;
  ps.term_signal = c.term_signal;
  if (info.state == "COMPLETED" && c.exit_code == 0) return ps;
  if (ps.exit_code == 0) ps.exit_code = c.term_signal > 0 ? 128 + c.term_signal : 1;
  ps.reason = absl::StrCat("Slurm job ", h.id, " ended ", info.state);
  static const std::map<std::string, std::string> kWhy = {
      {"TIMEOUT", "it hit its time limit"},
      {"OUT_OF_MEMORY", "a rank went past its memory limit; ask for more with --mem=... in "
                        "resources.slurm.extra_sbatch_args"},
      {"NODE_FAIL", "one of its nodes failed"},
      {"PREEMPTED", "a job of higher priority took its nodes"},
      {"BOOT_FAIL", "its nodes failed to boot"},
      {"DEADLINE", "it could not end before its --deadline"},
  };
  if (auto why = kWhy.find(info.state); why != kWhy.end()) {
    absl::StrAppend(&ps.reason, " (", why->second, ")");
  }
  if (c.term_signal > 0) {
    absl::StrAppend(&ps.reason, ", signal ", c.term_signal, " (", strsignal(c.term_signal), ")");
  } else {
    absl::StrAppend(&ps.reason, ", exit code ", c.exit_code);
  }
  // The last line a rank (or else the batch script) wrote on stderr says why.
  const std::string ranks = AttemptDir(h.dir, info.attempt) + "/ranks/rank.";
  for (int rank = 0; rank < 1024; ++rank) {
    std::string path = absl::StrCat(ranks, rank, ".err");
    if (access(path.c_str(), F_OK) != 0) break;
    std::string last = LastStderrMessage(path);
    if (!last.empty()) {
      absl::StrAppend(&ps.reason, "; rank ", rank, " stderr: ", last);
      return ps;
    }
  }
  std::string last = LastStderrMessage(absl::StrCat(h.dir, "/slurm-", h.id, ".out"));
  if (!last.empty()) absl::StrAppend(&ps.reason, "; batch output: ", last);
  return ps;
}

void SlurmLauncher::Terminate(const std::string& handle) {
  if (!IsSlurmHandle(handle)) return;
  const Handle h = ParseHandle(handle);
  // Called again every second while the cancel lasts: ranks that start late get it too.
  const Cached c = Refresh(handle, /*force=*/false);
  if (IsFinalSlurmState(c.info.state) || c.info.state == "UNKNOWN") return;
  CommandOutput r =
      c.info.pending()
          ? RunCommand({"scancel", h.id}, {}, options_.command_timeout_s)
          : RunCommand({"scancel", "--full", "--signal=TERM", h.id}, {}, options_.command_timeout_s);
  if (r.exit_code != 0) {
    std::fprintf(stderr, "moed: scancel of Slurm job %s failed: %s\n", h.id.c_str(),
                 OneLine(r.out).c_str());
  }
}

void SlurmLauncher::Kill(const std::string& handle) {
  if (!IsSlurmHandle(handle)) return;
  const Handle h = ParseHandle(handle);
  RunCommand({"scancel", "--full", "--signal=KILL", h.id}, {}, options_.command_timeout_s);
  CommandOutput r = RunCommand({"scancel", h.id}, {}, options_.command_timeout_s);
  if (r.exit_code != 0 && !absl::StrContains(r.out, "already completing or completed")) {
    std::fprintf(stderr, "moed: scancel of Slurm job %s failed: %s\n", h.id.c_str(),
                 OneLine(r.out).c_str());
  }
}

bool SlurmLauncher::AnyAlive(const std::string& handle) {
  if (!IsSlurmHandle(handle)) return false;
  const Cached c = Refresh(handle, /*force=*/false);
  if (!c.info.known) return true;  // not known yet (or Slurm unreachable): assume it runs
  return !IsFinalSlurmState(c.info.state) && c.info.state != "UNKNOWN";
}

}  // namespace moe::daemon
