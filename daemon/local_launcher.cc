// LocalLauncher: fork a monitor (new session) that forks mpirun and writes its wait status to
// <attempt-dir>/exit_status; Open MPI writes each rank's stdout/stderr to
// <attempt-dir>/ranks/1/rank.N/{stdout,stderr} (--output-filename DIR:nocopy). The workers get
// the attempt's folder (--attempt-dir) for the metric points they could not report.
#include "daemon/local_launcher.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/files.h"

extern char** environ;

namespace moe::daemon {
namespace {

// The worker's exit after its checkpoint on a SIGTERM (the shell's 128 + signal number: 143).
constexpr int kWorkerStoppedBySigterm = 128 + SIGTERM;

struct Handle {
  int pid = 0;             // the monitor: session leader of the attempt
  long long start = 0;     // its start time in clock ticks, to tell a reused pid apart
  std::string dir;         // the attempt directory
  std::vector<int> gpus;   // LaunchRequest::gpus
};

std::string FormatHandle(const Handle& h) {
  std::string s = absl::StrCat("pid=", h.pid, " start=", h.start, " dir=", h.dir);
  if (!h.gpus.empty()) absl::StrAppend(&s, " gpus=", absl::StrJoin(h.gpus, ","));
  return s;
}

Handle ParseHandle(const std::string& s) {
  Handle h;
  for (absl::string_view part : absl::StrSplit(s, ' ', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&part, "pid=")) {
      (void)absl::SimpleAtoi(part, &h.pid);
    } else if (absl::ConsumePrefix(&part, "start=")) {
      (void)absl::SimpleAtoi(part, &h.start);
    } else if (absl::ConsumePrefix(&part, "dir=")) {
      h.dir = std::string(part);
    } else if (absl::ConsumePrefix(&part, "gpus=")) {
      for (absl::string_view g : absl::StrSplit(part, ',', absl::SkipEmpty())) {
        int index = 0;
        if (absl::SimpleAtoi(g, &index)) h.gpus.push_back(index);
      }
    }
  }
  return h;
}

// /proc/<pid>/stat fields after the command name: state, ppid, pgrp, session, ..., starttime.
struct ProcStat {
  char state = '?';
  int ppid = 0;
  int session = 0;
  long long start = 0;
};

// False when the process is gone (its /proc entry vanishes, or reads fail with ESRCH, at any
// point: processes exit while moed looks at them).
bool ReadProcStat(int pid, ProcStat* out) {
  absl::StatusOr<std::string> read = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  if (!read.ok()) return false;
  const std::string& text = *read;
  size_t close = text.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream rest(text.substr(close + 2));
  int pgrp = 0;
  rest >> out->state >> out->ppid >> pgrp >> out->session;
  std::string skip;
  // Fields 7..21 sit between session (6) and starttime (22).
  for (int i = 7; i <= 21; ++i) rest >> skip;
  rest >> out->start;
  return static_cast<bool>(rest);
}

void Reap(int pid) {
  int status;
  while (waitpid(pid, &status, WNOHANG) < 0 && errno == EINTR) {
  }
}

// The monitor is ours (and alive, not a zombie) only if its start time matches.
bool MonitorAlive(const Handle& h) {
  if (h.pid <= 0) return false;
  Reap(h.pid);
  ProcStat st;
  if (!ReadProcStat(h.pid, &st)) return false;
  return st.start == h.start && st.state != 'Z' && st.state != 'X';
}

// GPU index -> the name the ranks' CUDA_VISIBLE_DEVICES uses: moed's own entry when moed runs
// with CUDA_VISIBLE_DEVICES set, else the index.
std::string GpuName(int index) {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible != nullptr) {
    std::vector<std::string> names = absl::StrSplit(visible, ',', absl::SkipWhitespace());
    if (index >= 0 && index < static_cast<int>(names.size())) {
      return std::string(absl::StripAsciiWhitespace(names[index]));
    }
  }
  return absl::StrCat(index);
}

// Async-signal-safe decimal formatting for the monitor child.
size_t FormatInt(int v, char* buf) {
  char tmp[16];
  size_t n = 0;
  bool neg = v < 0;
  unsigned u = neg ? 0u - static_cast<unsigned>(v) : static_cast<unsigned>(v);
  do {
    tmp[n++] = static_cast<char>('0' + u % 10);
    u /= 10;
  } while (u != 0);
  size_t len = 0;
  if (neg) buf[len++] = '-';
  while (n > 0) buf[len++] = tmp[--n];
  buf[len++] = '\n';
  return len;
}

}  // namespace

std::string ResolveOnPath(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    // As execvp looks: an empty entry is the current directory, and only a regular file runs (a
    // directory of that name has the x bit too).
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

absl::Status ParseExitStatus(const absl::StatusOr<std::string>& text, const std::string& path,
                             int* status) {
  if (!text.ok()) {
    return absl::DataLossError(absl::StrCat("the attempt's exit status ", path,
                                            " cannot be read (", text.status().message(),
                                            "); counted as a failure"));
  }
  absl::string_view word = absl::StripAsciiWhitespace(*text);
  if (word.empty()) {
    return absl::DataLossError(absl::StrCat("the attempt's exit status ", path,
                                            " is empty (was the disk full?); counted as a failure"));
  }
  int value = 0;
  if (!absl::SimpleAtoi(word, &value) || value < 0 || value > 0xffff) {
    std::string shown(word.substr(0, 40));
    for (char& c : shown) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
    }
    return absl::DataLossError(absl::StrCat("the attempt's exit status ", path, " holds '", shown,
                                            "', not a wait status; counted as a failure"));
  }
  *status = value;
  return absl::OkStatus();
}

namespace {

std::string SignalName(int sig) {
  const char* d = strsignal(sig);
  return d ? d : "unknown signal";
}

}  // namespace

std::vector<int> LocalLauncher::SessionMembers(int sid) {
  std::vector<int> out;
  if (sid <= 0) return out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    ProcStat st;
    if (ReadProcStat(pid, &st) && st.session == sid && st.state != 'Z' && st.state != 'X') {
      out.push_back(pid);
    }
  }
  closedir(d);
  return out;
}

absl::StatusOr<std::string> LocalLauncher::Launch(const LaunchRequest& req,
                                                  const RecordLaunch& record) {
  const std::string mpirun = ResolveOnPath(options_.mpirun);
  if (mpirun.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "launch error: mpirun ('", options_.mpirun,
        "') not found on PATH (install Open MPI or pass moed --mpirun)"));
  }
  if (access(options_.worker_bin.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("launch error: worker executable ", options_.worker_bin,
                     " is missing or not executable (build moe-worker or pass moed --worker-bin)"));
  }
  const std::string dir = AttemptDir(req.job_dir, req.attempt);
  if (absl::Status s = MakeDirs(dir); !s.ok()) return s;
  if (absl::Status s = MakeDirs(req.checkpoint_dir); !s.ok()) return s;

  std::vector<std::string> args = {mpirun, "--allow-run-as-root", "--oversubscribe",
                                   "--bind-to", "none", "-np",
                                   absl::StrCat(req.spec.resources().ranks()),
                                   "--output-filename", absl::StrCat(dir, "/ranks:nocopy")};
  // The ranks inherit moed's environment, except: MOE_TOKEN (moed's own), CUDA_VISIBLE_DEVICES
  // (a cuda job sees only its GPUs, so two jobs never share one), and NCCL_NVLS_ENABLE defaults
  // to 0 (NVLink SHARP multicast is not usable on every machine; a user setting is kept).
  std::vector<std::string> env;
  bool nvls_set = false;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "MOE_TOKEN=", 10) == 0) continue;
    if (std::strncmp(*e, "MOE_REPORT_SECRET=", 18) == 0) continue;
    if (!req.gpus.empty() && std::strncmp(*e, "CUDA_VISIBLE_DEVICES=", 21) == 0) continue;
    if (std::strncmp(*e, "NCCL_NVLS_ENABLE=", 17) == 0) nvls_set = true;
    env.emplace_back(*e);
  }
  if (!nvls_set) env.push_back("NCCL_NVLS_ENABLE=0");
  if (!req.gpus.empty()) {
    std::vector<std::string> names;
    for (int g : req.gpus) names.push_back(GpuName(g));
    env.push_back(absl::StrCat("CUDA_VISIBLE_DEVICES=", absl::StrJoin(names, ",")));
  }
  if (!req.token.empty()) {
    env.push_back(absl::StrCat("MOE_TOKEN=", req.token));
    args.insert(args.end(), {"-x", "MOE_TOKEN"});
  }
  if (!req.report_secret.empty()) {
    env.push_back(absl::StrCat("MOE_REPORT_SECRET=", req.report_secret));
    args.insert(args.end(), {"-x", "MOE_REPORT_SECRET"});
  }
  args.insert(args.end(), {options_.worker_bin, "--spec", req.spec_path, "--moed",
                           req.moed_address, "--job-id", req.job_id, "--attempt",
                           absl::StrCat(req.attempt), "--attempt-dir", dir,
                           "--checkpoint-dir", req.checkpoint_dir});
  if (req.resume) args.push_back("--resume");

  std::vector<char*> argv, envp;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string log_path = dir + "/mpirun.log";
  const std::string status_tmp = dir + "/exit_status.tmp";
  const std::string status_path = dir + "/exit_status";

  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    return absl::InternalError(absl::StrCat("launch error: cannot open ", log_path, ": ",
                                            std::strerror(errno)));
  }
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  // The monitor waits for one byte on this pipe before it starts mpirun: moed sends it once
  // the handle is stored. If moed dies first, the pipe closes and the monitor leaves quietly.
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) {
    int err = errno;
    close(log_fd);
    close(null_fd);
    return absl::ResourceExhaustedError(
        absl::StrCat("launch error: pipe failed: ", std::strerror(err)));
  }

  pid_t monitor = fork();
  if (monitor < 0) {
    int err = errno;
    close(log_fd);
    close(null_fd);
    close(go[0]);
    close(go[1]);
    return absl::ResourceExhaustedError(
        absl::StrCat("launch error: fork failed: ", std::strerror(err)));
  }
  if (monitor == 0) {
    // Monitor: only async-signal-safe calls from here on. It keeps none of moed's descriptors
    // (listening sockets, the database): stdin is /dev/null, stdout and stderr the log.
    setsid();
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    dup2(go[0], 3);
    syscall(SYS_close_range, 4U, ~0U, 0U);
    struct sigaction ign = {};
    ign.sa_handler = SIG_IGN;
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2}) sigaction(sig, &ign, nullptr);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    char go_byte = 0;
    ssize_t got;
    while ((got = read(3, &go_byte, 1)) < 0 && errno == EINTR) {
    }
    close(3);
    if (got != 1 || go_byte != 'g') {
      const char msg[] = "moed: the launch was not recorded; nothing was started\n";
      (void)!write(2, msg, sizeof(msg) - 1);
      _exit(0);  // no exit_status: a restarted moed sees the attempt lost and never started
    }
    pid_t child = fork();
    if (child == 0) {
      struct sigaction dfl = {};
      dfl.sa_handler = SIG_DFL;
      for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2}) {
        sigaction(sig, &dfl, nullptr);
      }
      execve(argv[0], argv.data(), envp.data());
      const char msg[] = "moed: exec of mpirun failed\n";
      (void)!write(2, msg, sizeof(msg) - 1);
      _exit(127);
    }
    int status = 127 << 8;
    if (child > 0) {
      while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
      }
    }
    char buf[32];
    size_t n = FormatInt(status, buf);
    // Renamed into place only when every byte and the fsync made it: a full disk leaves no
    // exit_status rather than an empty one, and moed then fails the attempt (never success).
    int fd = open(status_tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
      const bool written = write(fd, buf, n) == static_cast<ssize_t>(n) && fsync(fd) == 0;
      if (close(fd) == 0 && written) {
        rename(status_tmp.c_str(), status_path.c_str());
      } else {
        unlink(status_tmp.c_str());
      }
    }
    _exit(0);
  }
  close(log_fd);
  close(null_fd);
  close(go[0]);
  Handle h;
  h.pid = monitor;
  h.dir = dir;
  h.gpus = req.gpus;
  ProcStat st;
  if (ReadProcStat(monitor, &st)) h.start = st.start;
  const std::string handle = FormatHandle(h);
  if (absl::Status s = record(handle); !s.ok()) {
    close(go[1]);  // the monitor reads end-of-file and leaves without starting anything
    int wstatus;
    while (waitpid(monitor, &wstatus, 0) < 0 && errno == EINTR) {
    }
    return s;
  }
  const char go_byte = 'g';
  (void)!write(go[1], &go_byte, 1);
  close(go[1]);
  return handle;
}

std::vector<int> LocalLauncher::Gpus(const std::string& handle) const {
  return ParseHandle(handle).gpus;
}

void LocalLauncher::Describe(const std::string& handle, moe::v1::Job* view) const {
  view->clear_gpus();
  for (int g : Gpus(handle)) view->add_gpus(GpuName(g));
}

ProcessState LocalLauncher::Poll(const std::string& handle) {
  Handle h = ParseHandle(handle);
  ProcessState ps;
  if (h.dir.empty()) {
    ps.kind = ProcessState::kLost;
    ps.reason = "no record of the launched processes (moed stopped while launching)";
    return ps;
  }
  const std::string status_path = h.dir + "/exit_status";
  absl::StatusOr<std::string> status_text = ReadFile(status_path);
  if (!status_text.ok() && absl::IsNotFound(status_text.status())) {
    if (MonitorAlive(h)) return ps;  // kRunning
    // Re-check: the monitor may have written the file just before exiting.
    status_text = ReadFile(status_path);
    if (!status_text.ok() && absl::IsNotFound(status_text.status())) {
      ps.kind = ProcessState::kLost;
      ps.reason = "the mpirun monitor process is gone without an exit status (killed, or its "
                  "disk full?)";
      return ps;
    }
  }
  Reap(h.pid);
  ps.kind = ProcessState::kExited;
  int status = 0;
  if (absl::Status s = ParseExitStatus(status_text, status_path, &status); !s.ok()) {
    // Never success: an exit status nobody can read is a failure that says so.
    ps.exit_code = -1;
    ps.reason = std::string(s.message());
    return ps;
  }
  if (WIFSIGNALED(status)) {
    ps.term_signal = WTERMSIG(status);
    ps.exit_code = 128 + ps.term_signal;
    ps.reason = absl::StrCat("mpirun was killed by signal ", ps.term_signal, " (",
                             SignalName(ps.term_signal), ")");
    return ps;
  }
  ps.exit_code = WEXITSTATUS(status);
  if (ps.exit_code == 0) return ps;

  // Name the rank from mpirun's own report when it gives one.
  absl::StatusOr<std::string> log = ReadFile(h.dir + "/mpirun.log");
  std::string text = log.ok() ? *log : "";
  // mpirun reports last: search only the log's tail (it holds mpirun's own output, which grows
  // with its warnings, and the regex engine recurses over what it matches, so a long run of text
  // could exhaust moed's stack).
  constexpr size_t kTail = 64 << 10;
  if (text.size() > kTail) text.erase(0, text.size() - kTail);
  std::smatch m;
  int rank = -1;
  static const std::regex kSignal(
      R"(process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+) \(([^)]*)\))");
  static const std::regex kExit(R"(Process name: \[\[\d+,\d+\],(\d+)\]\s+Exit code:\s+(\d+))");
  // A rank that failed alone, or found a peer silent past the deadline, ends every rank itself.
  static const std::regex kAbort(R"(MPI_ABORT was invoked on rank (\d+) in communicator \S+\s+with errorcode (\d+))");
  if (std::regex_search(text, m, kAbort)) {
    if (!absl::SimpleAtoi(m[1].str(), &rank)) rank = -1;
    ps.reason = absl::StrCat("rank ", rank, " ended the job (MPI_ABORT, code ", m[2].str(), ")");
  } else if (std::regex_search(text, m, kSignal)) {
    if (!absl::SimpleAtoi(m[1].str(), &rank)) rank = -1;
    ps.reason = absl::StrCat("rank ", rank, " was killed by signal ", m[2].str(), " (",
                             m[3].str(), ")");
  } else if (std::regex_search(text, m, kExit)) {
    if (!absl::SimpleAtoi(m[1].str(), &rank)) rank = -1;
    int code = -1;
    const bool stopped = absl::SimpleAtoi(m[2].str(), &code) && code == kWorkerStoppedBySigterm;
    ps.reason = absl::StrCat("rank ", rank, " exited with code ", m[2].str(),
                             stopped ? " (it stopped on a SIGTERM sent from outside moed)" : "");
  } else if (ps.exit_code == 127 && text.find("exec of mpirun failed") != std::string::npos) {
    ps.reason = "launch error: mpirun could not be executed";
    return ps;
  } else {
    ps.reason = absl::StrCat("mpirun exited with code ", ps.exit_code);
  }
  // The last line the failing rank wrote on stderr says why. Rank unknown (mpirun's report lost:
  // its MPI_ABORT notice can fail to print), the rank whose last line is a worker's own failure
  // ("moe-worker rank N: ...") says it, else the first rank that wrote anything.
  int said_rank = -1;
  std::string said;
  for (const OutputFile& f : OutputFiles(handle)) {
    if (rank >= 0 && f.rank != rank) continue;
    if (f.path.size() < 7 || f.path.compare(f.path.size() - 7, 7, "/stderr") != 0) continue;
    std::string last = LastStderrMessage(f.path);
    if (last.empty()) continue;
    const bool own = absl::StartsWith(last, "moe-worker rank ");
    if (said.empty() || own) {
      said = std::move(last);
      said_rank = f.rank;
    }
    if (own) break;
  }
  if (!said.empty()) {
    absl::StrAppend(&ps.reason, "; rank ", said_rank, " stderr: ", said);
  }
  return ps;
}

void LocalLauncher::Terminate(const std::string& handle) {
  // SIGTERM to the ranks only: they checkpoint and exit, and mpirun then ends by itself.
  // (mpirun itself would answer SIGTERM by killing the ranks at once.)
  Handle h = ParseHandle(handle);
  if (h.pid <= 0) return;
  for (int pid : SessionMembers(h.pid)) {
    if (pid == h.pid) continue;
    ProcStat st;
    if (ReadProcStat(pid, &st) && st.ppid == h.pid) continue;  // mpirun
    kill(pid, SIGTERM);
  }
}

void LocalLauncher::Kill(const std::string& handle) {
  Handle h = ParseHandle(handle);
  if (h.pid <= 0) return;
  for (int pid : SessionMembers(h.pid)) kill(pid, SIGKILL);
  Reap(h.pid);
}

bool LocalLauncher::AnyAlive(const std::string& handle) {
  Handle h = ParseHandle(handle);
  if (h.pid <= 0) return false;
  Reap(h.pid);
  return !SessionMembers(h.pid).empty();
}

std::vector<OutputFile> LocalLauncher::OutputFiles(const std::string& handle) {
  Handle h = ParseHandle(handle);
  std::vector<OutputFile> out;
  if (h.dir.empty()) return out;
  const std::string root = h.dir + "/ranks";
  DIR* top = opendir(root.c_str());
  if (top == nullptr) return out;
  while (dirent* job = readdir(top)) {
    if (job->d_name[0] == '.') continue;
    const std::string job_dir = absl::StrCat(root, "/", job->d_name);
    DIR* ranks = opendir(job_dir.c_str());
    if (ranks == nullptr) continue;
    while (dirent* r = readdir(ranks)) {
      absl::string_view name = r->d_name;
      int rank = 0;
      if (!absl::ConsumePrefix(&name, "rank.") || !absl::SimpleAtoi(name, &rank)) continue;
      for (const char* stream : {"stdout", "stderr"}) {
        std::string path = absl::StrCat(job_dir, "/", r->d_name, "/", stream);
        struct stat sb;
        if (stat(path.c_str(), &sb) == 0) out.push_back({rank, path});
      }
    }
    closedir(ranks);
  }
  closedir(top);
  std::sort(out.begin(), out.end(),
            [](const OutputFile& a, const OutputFile& b) { return a.path < b.path; });
  return out;
}

}  // namespace moe::daemon
