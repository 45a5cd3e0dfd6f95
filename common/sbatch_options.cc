// sbatch options against the allowlist. Exact long names only: sbatch (getopt_long) also takes
// unambiguous prefixes ("--out=" for --output), which are therefore refused as unknown.
#include "common/sbatch_options.h"

#include <map>
#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/job_spec_internal.h"

namespace moe {
namespace {

// Placement, limits, accounting and notification: none reaches identity, environment, output
// or the script. Options moed sets itself from the spec (--nodes, --ntasks, --gpus-per-node,
// --job-name, --output, --chdir, --export, --hold, --parsable) are not here either.
const std::set<absl::string_view>& Allowed() {
  static const std::set<absl::string_view> kAllowed = {
      "account",        "acctg-freq",     "begin",           "comment",
      "constraint",     "contiguous",     "core-spec",       "cores-per-socket",
      "cpu-freq",       "cpus-per-gpu",   "cpus-per-task",   "deadline",
      "delay-boot",     "dependency",     "distribution",    "exclude",
      "exclusive",      "extra-node-info", "gpu-bind",       "gpu-freq",
      "gpus",           "gpus-per-socket", "gpus-per-task",  "gres",
      "gres-flags",     "hint",           "licenses",        "mail-type",
      "mail-user",      "mem",            "mem-bind",        "mem-per-cpu",
      "mem-per-gpu",    "mincpus",        "network",         "nice",
      "no-requeue",     "nodelist",       "ntasks-per-core", "ntasks-per-gpu",
      "ntasks-per-socket", "overcommit",  "oversubscribe",   "partition",
      "power",          "prefer",         "priority",        "profile",
      "qos",            "requeue",        "reservation",     "signal",
      "sockets-per-node", "spread-job",   "switches",        "thread-spec",
      "threads-per-core", "time",         "time-min",        "tmp",
      "use-min-nodes",  "wckey",
  };
  return kAllowed;
}

// Short forms of allowed options (sbatch's letters); any other letter is refused.
const std::map<char, absl::string_view>& ShortNames() {
  static const std::map<char, absl::string_view> kShort = {
      {'A', "account"},  {'B', "extra-node-info"}, {'C', "constraint"}, {'c', "cpus-per-task"},
      {'d', "dependency"}, {'G', "gpus"},          {'L', "licenses"},   {'m', "distribution"},
      {'O', "overcommit"}, {'p', "partition"},     {'q', "qos"},        {'S', "core-spec"},
      {'s', "oversubscribe"}, {'t', "time"},       {'w', "nodelist"},   {'x', "exclude"},
  };
  return kShort;
}

// Why the dangerous ones are refused, in words.
absl::string_view Danger(absl::string_view name, char letter) {
  static const std::map<absl::string_view, absl::string_view> kWhy = {
      {"uid", "it changes who the job runs as"},
      {"gid", "it changes who the job runs as"},
      {"export", "it changes the job's environment (e.g. BASH_ENV runs any script)"},
      {"export-file", "it changes the job's environment"},
      {"get-user-env", "it changes the job's environment (a login shell's)"},
      {"propagate", "it changes the job's environment (resource limits)"},
      {"output", "it moves the job's output (moed reads it from the job directory)"},
      {"error", "it moves the job's output (moed reads it from the job directory)"},
      {"input", "it changes what the job reads"},
      {"open-mode", "it changes how the job's output is written"},
      {"chdir", "it changes the job's working directory (where its output goes)"},
      {"wrap", "it replaces the script moed renders"},
      {"container", "it runs the job in another image"},
      {"bb", "it runs burst-buffer scripts"},
      {"bbf", "it runs burst-buffer scripts"},
      {"array", "moed runs one batch job per attempt"},
      {"job-name", "moed names the job itself"},
      {"hold", "moed holds and releases the job itself"},
      {"parsable", "moed sets it itself"},
      {"nodes", "set resources.slurm.nodes instead"},
      {"ntasks", "set resources.ranks instead"},
      {"ntasks-per-node", "set resources.slurm.ranks_per_node instead"},
      {"gpus-per-node", "set resources.slurm.gpus_per_node instead"},
  };
  static const std::map<char, absl::string_view> kLetters = {
      {'o', "output"}, {'e', "error"}, {'i', "input"}, {'D', "chdir"}, {'J', "job-name"},
      {'a', "array"},  {'H', "hold"},  {'N', "nodes"}, {'n', "ntasks"},
  };
  if (letter != 0) {
    auto l = kLetters.find(letter);
    if (l == kLetters.end()) return "";
    name = l->second;
  }
  auto it = kWhy.find(name);
  return it == kWhy.end() ? absl::string_view() : it->second;
}

std::string Shown(absl::string_view arg) {
  std::string s(arg.substr(0, 60));
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return arg.size() > 60 ? s + "..." : s;
}

}  // namespace

std::string RefusedSbatchOption(std::string_view text) {
  const absl::string_view arg(text.data(), text.size());
  for (char c : arg) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return absl::StrCat("'", Shown(arg), "' holds a control character");
    }
  }
  absl::string_view name;
  char letter = 0;
  if (arg.size() > 2 && arg.substr(0, 2) == "--") {
    name = arg.substr(2, arg.find('=') == absl::string_view::npos ? absl::string_view::npos
                                                                 : arg.find('=') - 2);
  } else if (arg.size() >= 2 && arg[0] == '-' && arg[1] != '-') {
    letter = arg[1];
    auto it = ShortNames().find(letter);
    if (it != ShortNames().end()) name = it->second;
  } else {
    return absl::StrCat("'", Shown(arg), "' is not an option (one sbatch option per entry, "
                        "e.g. --qos=high)");
  }
  if (const SbatchSignal signal = ParseSbatchSignal(text); signal.present && !signal.checkpoint) {
    return absl::StrCat("'", Shown(arg), "' is refused: moed's batch script checkpoints when Slurm sends it "
                        "USR1 before the time limit, and another signal or target would end the job without "
                        "that checkpoint; only when may change: --signal=B:USR1@SECONDS");
  }
  if (!name.empty() && Allowed().count(name) > 0) return "";
  const std::string option = letter != 0 ? std::string{'-', letter} : absl::StrCat("--", name);
  absl::string_view why = Danger(name, letter);
  return absl::StrCat(
      "'", Shown(arg), "' is refused: ", option, " ",
      why.empty() ? "is not on moed's list of sbatch options that cannot change a job's user, "
                    "environment, output or script"
                  : why,
      " (docs/slurm.md lists the options a job may add)");
}

int64_t SlurmTimeLimitSeconds(std::string_view text) {
  absl::string_view t(text.data(), text.size());
  int64_t days = 0;
  const bool has_days = absl::StrContains(t, '-');
  if (has_days) {
    if (!absl::SimpleAtoi(t.substr(0, t.find('-')), &days)) return 0;
    t.remove_prefix(t.find('-') + 1);
  }
  std::vector<int64_t> v;
  for (absl::string_view part : absl::StrSplit(t, ':')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(part, &n) || n < 0) return 0;
    v.push_back(n);
  }
  int64_t seconds = 0;
  if (has_days) {  // D-H, D-H:M, D-H:M:S
    if (v.size() > 3) return 0;
    v.resize(3, 0);
    seconds = ((days * 24 + v[0]) * 60 + v[1]) * 60 + v[2];
  } else if (v.size() == 1) {  // M
    seconds = v[0] * 60;
  } else if (v.size() == 2) {  // M:S
    seconds = v[0] * 60 + v[1];
  } else if (v.size() == 3) {  // H:M:S
    seconds = (v[0] * 60 + v[1]) * 60 + v[2];
  }
  return (seconds + 59) / 60 * 60;
}

SbatchSignal ParseSbatchSignal(std::string_view text) {
  absl::string_view arg(text.data(), text.size());
  SbatchSignal signal;
  if (!absl::ConsumePrefix(&arg, "--signal")) return signal;
  if (arg.empty()) {
    signal.present = true;  // no value: sbatch would ask for one
    return signal;
  }
  if (!absl::ConsumePrefix(&arg, "=")) return signal;  // another option (--signals...)
  signal.present = true;
  // The template traps USR1 in the batch script to checkpoint and requeue before the time limit:
  // a job may move that signal earlier or later, but another signal or target ends the job without
  // the checkpoint (--signal=B:TERM@60 replaced the template's USR1). MatchesPattern bounds the
  // input (a 300000-digit lead overflowed std::regex's recursion).
  static const std::regex kUsr1ToBatch("B:(SIG)?(USR1|10)(@[0-9]+)?", std::regex::icase);
  signal.checkpoint = job_spec_internal::MatchesPattern(std::string(arg), kUsr1ToBatch);
  const size_t at = arg.find('@');
  int lead = 60;  // sbatch's default lead
  if (at == absl::string_view::npos || absl::SimpleAtoi(arg.substr(at + 1), &lead)) {
    signal.lead_seconds = lead;
  }
  return signal;
}

}  // namespace moe
