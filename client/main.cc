// moectl: the command-line client. main parses the command line with CLI11 into each command's
// options (client/commands.h) and runs the one command given; `moectl COMMAND --help` says more.
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "client/commands.h"
#include "client/connection.h"
#include "common/job_id.h"
#include "common/nearest_name.h"
#include "moe_version.h"

namespace {

using moe::client::OutputFormat;

const std::vector<std::string> kStates = {"QUEUED",    "STARTING", "RUNNING",  "RESTARTING",
                                          "SUCCEEDED", "FAILED",   "CANCELLED"};
const std::vector<std::string> kFinalStates = {"SUCCEEDED", "FAILED", "CANCELLED"};

// "7d", "12h", "30m", "90s", "2w", or several from larger units to smaller ("1d12h"), each unit
// once; milliseconds, or what is wrong with the text.
absl::StatusOr<int64_t> ParseAge(const std::string& text) {
  const std::string like = "an age is like 7d, 12h, 30m or 1d12h (units w, d, h, m, s, larger first, each once)";
  if (text.empty()) return absl::InvalidArgumentError(absl::StrCat("it is empty; ", like));
  constexpr char kUnits[] = "wdhms";
  constexpr int64_t kMs[] = {7 * 24 * 3600 * 1000LL, 24 * 3600 * 1000LL, 3600 * 1000, 60 * 1000, 1000};
  int64_t total = 0;
  int last = -1;  // the index in kUnits of the unit before
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[j]))) ++j;
    if (j == i || j == text.size()) {
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not an age: ", like));
    }
    const char* unit = std::strchr(kUnits, text[j]);
    if (unit == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not an age: '", std::string(1, text[j]),
                                                     "' is no unit; ", like));
    }
    const int u = static_cast<int>(unit - kUnits);
    if (u <= last) {
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not an age: '", std::string(1, text[j]),
                                                     u == last ? "' comes twice; " : "' comes after a smaller unit; ",
                                                     like));
    }
    last = u;
    int64_t n = 0;
    if (!absl::SimpleAtoi(text.substr(i, j - i), &n) || n > (std::numeric_limits<int64_t>::max() - total) / kMs[u]) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", text, "' is too large an age (beyond 290 million years)"));
    }
    total += n * kMs[u];
    i = j + 1;
  }
  return total;
}

// A number of seconds from 0 to 1e9 (NaN and infinities have no millisecond count).
CLI::Validator Seconds() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double s = 0;
        if (absl::SimpleAtod(text, &s) && s >= 0 && s <= 1e9) return "";
        return absl::StrCat("'", text, "' is not a number of seconds from 0 to 1e9");
      },
      "SECONDS");
}

// An option that names something: given empty ("--from ''", a variable that was not set), it
// would otherwise be taken as not given at all.
CLI::Validator NotEmpty(const std::string& what) {
  return CLI::Validator(
      [what](std::string& text) -> std::string {
        return text.empty() ? absl::StrCat("is empty; give ", what) : "";
      },
      "");
}

// A job id (common/job_id.h): one that cannot be is a usage error here, before any RPC (an id
// that is not UTF-8 could not even be sent).
CLI::Validator JobId() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const absl::Status bad = moe::CheckJobId(text);
        return bad.ok() ? "" : std::string(absl::StripPrefix(bad.message(), "id: "));
      },
      "");
}

// A submit's request id (moectl submit --request-id).
CLI::Validator RequestId() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const absl::Status bad = moe::CheckRequestId(text, "request id");
        return bad.ok() ? "" : std::string(absl::StripPrefix(bad.message(), "request id: "));
      },
      "");
}

// A glob for fnmatch (list --name): an unclosed '[' or a lone trailing '\\' matched no job at all,
// without a word.
CLI::Validator Glob() {
  return CLI::Validator(
      [](std::string& p) -> std::string {
        const std::string bad = absl::StrCat("'", p, "' is not a glob: ");
        for (size_t i = 0; i < p.size(); ++i) {
          if (p[i] == '\\') {
            if (i + 1 == p.size()) return bad + "it ends in a lone '\\'; write \\\\ for a '\\' itself";
            ++i;
            continue;
          }
          if (p[i] != '[') continue;
          size_t j = i + 1;
          if (j < p.size() && (p[j] == '!' || p[j] == '^')) ++j;
          if (j < p.size() && p[j] == ']') ++j;  // a ']' first in the set is one of its characters
          while (j < p.size() && p[j] != ']') {
            // [:alpha:], [.x.], [=x=] inside a set end at their own ":]", ".]", "=]".
            if (p[j] == '[' && j + 1 < p.size() && (p[j + 1] == ':' || p[j + 1] == '.' || p[j + 1] == '=')) {
              const size_t close = p.find(std::string{p[j + 1], ']'}, j + 2);
              j = close == std::string::npos ? p.size() : close + 2;
            } else {
              ++j;
            }
          }
          if (j >= p.size()) {
            return absl::StrCat(bad, "the '[' at character ", i + 1, " opens a set of characters that no ']' "
                                "closes; close it (e.g. alpha-[12]), or write \\[ for a '[' itself");
          }
          i = j;
        }
        return "";
      },
      "");
}

// moed's gRPC address (client/connection.h's ServerAddressProblem).
CLI::Validator ServerAddress() {
  return CLI::Validator(
      [](std::string& text) -> std::string { return moe::client::ServerAddressProblem(text); }, "");
}

// The command nearest to a word that is none (common/nearest_name.h), or "".
std::string NearestCommand(CLI::App& app, const std::string& word) {
  std::vector<std::string> names;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    names.push_back(sub->get_name());
  }
  return moe::NearestName(word, names).value_or("");
}

// The first word of argv that is no option (nor --server's value): the command as typed.
std::string CommandWord(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--server") {
      ++i;
    } else if (a.empty() || a[0] != '-') {
      return a;
    }
  }
  return "";
}

// One command: its name, its usage line (shown on errors and atop --help) and its description.
CLI::App* AddCommand(CLI::App& app, const char* name, const std::string& usage,
                     const std::string& what) {
  CLI::App* sub = app.add_subcommand(name, what);
  sub->footer(absl::StrCat("usage: moectl ", usage));
  sub->description(absl::StrCat("usage: moectl ", usage, "\n  ", what));
  return sub;
}

CLI::Option* AddOutput(CLI::App* sub, std::string* value, const std::string& names) {
  return sub->add_option(names, *value, "output format: table, json (for scripts) or csv")
      ->check(CLI::IsMember({"table", "json", "csv"}))
      ->default_str("table");
}

OutputFormat Format(const std::string& v) {
  return v == "json" ? OutputFormat::kJson : v == "csv" ? OutputFormat::kCsv : OutputFormat::kTable;
}

// A bash completion script for every command and flag of app; job ids come from moed.
std::string BashCompletion(CLI::App& app) {
  std::string commands, cases;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    std::vector<std::string> flags = {"--help"};
    for (const CLI::Option* opt : sub->get_options()) {
      if (opt->get_positional() || opt->get_name() == "--help") continue;
      for (const std::string& n : opt->get_lnames()) flags.push_back("--" + n);
      for (const std::string& n : opt->get_snames()) flags.push_back("-" + n);
    }
    absl::StrAppend(&commands, commands.empty() ? "" : " ", sub->get_name());
    const std::string n = sub->get_name();
    const bool jobs = n == "status" || n == "logs" || n == "cancel" || n == "metrics" ||
                      n == "delete" || n == "resume" || n == "export";
    const bool files = n == "validate" || n == "submit";
    absl::StrAppend(&cases, "    ", n, ") words=\"", absl::StrJoin(flags, " "), "\"",
                    jobs ? "; ids=1" : "", files ? "; yaml=1" : "", " ;;\n");
  }
  return absl::StrCat(R"SH(# bash completion for moectl: source <(moectl completion bash)
_moectl() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
  local cmd="" i words="" ids=0 yaml=0
  for ((i = 1; i < COMP_CWORD; i++)); do
    case ${COMP_WORDS[i]} in
      --server) ((i++)) ;;
      -*) ;;
      *) cmd=${COMP_WORDS[i]}; break ;;
    esac
  done
  case $prev in
    -o|--output|--format) COMPREPLY=($(compgen -W "table json csv" -- "$cur")); return ;;
    --state) COMPREPLY=($(compgen -W ")SH", absl::StrJoin(kStates, " "), R"SH(" -- "$cur")); return ;;
    --svg) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --server|--rank|--tail|--wait|--limit|--name|--older-than|--steps|--request-id) return ;;
    --from) COMPREPLY=($(compgen -W "$(moectl list -o csv 2>/dev/null | tail -n +2 | cut -d, -f1)" -- "$cur")); return ;;
    --dtype) COMPREPLY=($(compgen -W "fp32 bf16" -- "$cur")); return ;;
  esac
  if [[ -z $cmd ]]; then
    COMPREPLY=($(compgen -W ")SH", commands, R"SH( --server --help --version" -- "$cur"))
    return
  fi
  case $cmd in
)SH", cases, R"SH(  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
  elif ((ids)); then
    COMPREPLY=($(compgen -W "$(moectl list -o csv 2>/dev/null | tail -n +2 | cut -d, -f1)" -- "$cur"))
  elif ((yaml)); then
    COMPREPLY=($(compgen -f -X '!*.y*ml' -- "$cur") $(compgen -d -- "$cur"))
  fi
}
complete -o filenames -F _moectl moectl
)SH");
}

// CLI11's words for two mistakes, in moectl's: a flag given twice ("At Most 1 required but received
// 2") and a number that is no number ("Value abc not in range 1 to 2147483647").
std::string PlainParseError(std::string text) {
  if (const size_t at = text.find("At Most 1 required but received "); at != std::string::npos) {
    const std::string times = text.substr(at + 32);
    return absl::StrCat(text.substr(0, at), "given ", times, " times; give it once");
  }
  if (const size_t at = text.find("Value "); at != std::string::npos) {
    const size_t range = text.find(" not in range ", at);
    if (range != std::string::npos) {
      const std::string value = text.substr(at + 6, range - at - 6);
      int64_t n = 0;
      if (!absl::SimpleAtoi(value, &n)) {
        return absl::StrCat(text.substr(0, at), "'", value, "' is not a whole number; give one from ",
                            text.substr(range + 14));
      }
    }
  }
  return text;
}

// Output that a full disk cut short must not read as success (exit 0 with a truncated table or
// JSON): exit 1, saying whether the command itself did what it was asked (a submitted job stays
// submitted).
int WithOutputChecked(int rc) {
  const std::string why = moe::client::StdoutError();
  if (why.empty() || moe::client::StdoutReaderGone()) return rc;
  if (rc == 0) {
    std::fprintf(stderr, "moectl: the command succeeded, but its output could not be written (%s): what it "
                 "printed is incomplete\n", why.c_str());
    return 1;
  }
  std::fprintf(stderr, "moectl: its output could not be written either (%s)\n", why.c_str());
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  // Into a file or pipe, output goes out in large blocks (the first failed write is then one the
  // commands' own flushes see, with its reason); a terminal keeps line buffering.
  if (!isatty(STDOUT_FILENO)) std::setvbuf(stdout, nullptr, _IOFBF, 1 << 20);
  // A reader that closes the pipe (`| head -1`) makes writes fail with EPIPE, which the commands
  // see, instead of killing moectl with a signal (exit 141, not one of moectl's codes).
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app(
      "moectl: submit and watch Mixture-of-Experts training jobs on moed.\n"
      "server: --server, else MOE_SERVER, else `server:` in MOE_CONFIG or\n"
      "~/.config/moe/config.yaml (default 127.0.0.1:50051); token: MOE_TOKEN or `token_file:`.\n"
      "exit codes: 0 ok, 1 an error from moed, a job that did not succeed or output that could not be\n"
      "written, 2 bad usage or configuration (a flag, the config file, MOE_* variables, the token file)",
      "moectl");
  app.set_version_flag("--version", absl::StrCat("moectl ", moe::kMoeVersion));
  std::string server;
  app.add_option("--server", server, "moed's gRPC address HOST:PORT")
      ->check(NotEmpty("HOST:PORT"))
      ->check(ServerAddress());
  app.require_subcommand(1, 1);
  app.fallthrough();
  std::function<int()> run;

  std::string file;
  CLI::App* validate = AddCommand(app, "validate", "validate JOB.yaml [--gpu-memory SIZE]",
                                  "check a job file and describe the job (exit 2 with every error)");
  validate->add_option("JOB.yaml", file, "the job file")->required();
  std::string gpu_memory;
  validate->add_option("--gpu-memory", gpu_memory,
                       "a cuda job: whether it fits GPUs of this size (80GiB, 141GB, 24GiB), and what would "
                       "make it fit")
      ->check(NotEmpty("a size such as 80GiB"));
  validate->callback([&] { run = [&] { return moe::client::RunValidate(file, gpu_memory); }; });

  moe::client::SubmitOptions submit_o;
  CLI::App* submit = AddCommand(app, "submit", "submit JOB.yaml [-f|--follow] [--from JOB] [--request-id ID]",
                                "validate locally, submit, print the job id");
  submit->add_option("JOB.yaml", submit_o.file, "the job file")->required();
  submit->add_option("--from", submit_o.from_job,
                     "start from this job's newest checkpoint (sets model.init_from to its checkpoint "
                     "directory; the optimizer starts fresh), e.g. to fine-tune")
      ->check(NotEmpty("a job id"))
      ->check(JobId());
  submit->add_option("--request-id", submit_o.request_id,
                     "this submit's own name (1 to 128 of A-Z a-z 0-9 . _ : -, e.g. a CI build's id): a submit "
                     "sent again with it gets the job the first one created, not a second job; by default "
                     "moectl makes one up for its own resends")
      ->check(RequestId());
  submit->add_flag("-f,--follow", submit_o.follow,
                   "follow the job's logs until it ends; exit 0 only if it SUCCEEDED");
  submit->callback([&] { run = [&] { return moe::client::RunSubmit(submit_o); }; });

  moe::client::ListOptions list_o;
  std::string list_fmt = "table";
  CLI::App* list = AddCommand(app, "list",
                              "list [-o table|json|csv] [--state S]... [--name PATTERN] [--limit N]",
                              "the jobs moed knows, oldest first");
  AddOutput(list, &list_fmt, "-o,--output");
  list->add_option("--state", list_o.states, "only jobs in this state (repeatable)")
      ->check(CLI::IsMember(kStates, CLI::ignore_case));
  list->add_option("--name", list_o.name_pattern, "only jobs whose name matches this glob")->check(Glob());
  list->add_option("--limit", list_o.limit, "only the newest N (after the filters); leave it out for all")
      ->check(CLI::Range(1, std::numeric_limits<int>::max()));
  list->callback([&] {
    list_o.output = Format(list_fmt);
    for (std::string& st : list_o.states) absl::AsciiStrToUpper(&st);
    run = [&] { return moe::client::RunList(list_o); };
  });

  moe::client::StatusOptions status_o;
  std::string status_fmt = "table";
  CLI::App* status = AddCommand(app, "status", "status [JOB...] [-o table|json|csv]",
                                "state, step/total, loss, tokens/s, ETA, restarts, reason; with "
                                "JOBs each in detail (GPUs, expert load per rank)");
  status->add_option("JOB", status_o.ids, "job ids (none: a line per job)")->check(JobId());
  AddOutput(status, &status_fmt, "-o,--output");
  status->callback([&] {
    status_o.output = Format(status_fmt);
    run = [&] { return moe::client::RunStatus(status_o); };
  });

  moe::client::LogsOptions logs_o;
  CLI::App* logs = AddCommand(app, "logs", "logs JOB [-f] [--rank N] [--tail N]",
                              "a job's log lines; -f follows until the job ends");
  logs->add_option("JOB", logs_o.id, "job id")->required()->check(JobId());
  logs->add_flag("-f,--follow", logs_o.follow, "follow until the job ends (exit 0 if it SUCCEEDED)");
  logs->add_option("--rank", logs_o.rank, "only this rank (0..ranks-1)")
      ->check(CLI::Range(0, 1 << 20));
  logs->add_option("--tail", logs_o.tail, "only the last N lines per rank; leave it out for all")
      ->check(CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max()));
  logs->callback([&] { run = [&] { return moe::client::RunLogs(logs_o); }; });

  moe::client::ResumeOptions resume_o;
  CLI::App* resume = AddCommand(app, "resume", "resume JOB [--steps N] [-f|--follow]",
                                "continue a finished, failed or cancelled job from its newest complete "
                                "checkpoint (same job id, a new attempt)");
  resume->add_option("JOB", resume_o.id, "job id")->required()->check(JobId());
  resume->add_option("--steps", resume_o.steps, "train up to step N (the job's train.steps becomes N)")
      ->check(CLI::Range(1, std::numeric_limits<int>::max()));
  resume->add_flag("-f,--follow", resume_o.follow, "follow the job's logs until it ends");
  resume->callback([&] { run = [&] { return moe::client::RunResume(resume_o); }; });

  moe::client::CancelOptions cancel_o;
  CLI::App* cancel = AddCommand(app, "cancel", "cancel JOB [--no-wait] [--wait SECONDS]",
                                "stop a job (SIGTERM, grace, SIGKILL); waits until CANCELLED");
  cancel->add_option("JOB", cancel_o.id, "job id")->required()->check(JobId());
  CLI::Option* no_wait = cancel->add_flag("--no-wait", cancel_o.no_wait, "return at once");
  cancel->add_option("--wait", cancel_o.wait_s, "wait at most this long (default 300)")
      ->check(Seconds())
      ->excludes(no_wait);
  cancel->callback([&] { run = [&] { return moe::client::RunCancel(cancel_o); }; });

  moe::client::MetricsOptions metrics_o;
  std::string metrics_fmt = "table";
  CLI::App* metrics = AddCommand(app, "metrics", "metrics JOB [-o table|json|csv] [--svg FILE]",
                                 "metric points: a table with a loss plot, JSON or CSV (with "
                                 "every MoE layer); --svg writes the dashboard's charts");
  metrics->add_option("JOB", metrics_o.id, "job id")->required()->check(JobId());
  AddOutput(metrics, &metrics_fmt, "-o,--output,--format");
  metrics->add_option("--svg", metrics_o.svg_file, "also write the charts to FILE (SVG)")
      ->check(NotEmpty("a file name"))
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            return text == "-" ? "is '-': the charts go to a file (stdout carries the table, JSON or CSV); "
                                 "give a file name such as charts.svg"
                               : "";
          },
          ""));
  metrics->callback([&] {
    metrics_o.output = Format(metrics_fmt);
    run = [&] { return moe::client::RunMetrics(metrics_o); };
  });

  moe::client::DeleteOptions delete_o;
  CLI::App* del = AddCommand(app, "delete", "delete JOB... [--checkpoints]",
                             "remove finished jobs: their records, metrics, logs and (with "
                             "--checkpoints) checkpoints; a job not finished is refused");
  del->add_option("JOB", delete_o.ids, "job ids")->required()->check(JobId());
  del->add_flag("--checkpoints", delete_o.checkpoints, "also remove the checkpoint directory");
  del->callback([&] { run = [&] { return moe::client::RunDelete(delete_o); }; });

  moe::client::PruneOptions prune_o;
  std::string older_than;
  CLI::App* prune = AddCommand(app, "prune",
                               "prune --older-than AGE [--state S]... [--checkpoints] [--dry-run]",
                               "delete every finished job that ended more than AGE ago (AGE "
                               "like 7d, 12h, 30m, 1d12h)");
  prune->add_option("--older-than", older_than, "age: Ns, Nm, Nh, Nd, Nw, or several")->required();
  prune->add_option("--state", prune_o.states, "only this final state (repeatable)")
      ->check(CLI::IsMember(kFinalStates, CLI::ignore_case));
  prune->add_flag("--checkpoints", prune_o.checkpoints, "also remove checkpoint directories");
  prune->add_flag("--dry-run", prune_o.dry_run, "list what would be deleted, delete nothing");
  prune->callback([&] {
    for (std::string& st : prune_o.states) absl::AsciiStrToUpper(&st);
    const absl::StatusOr<int64_t> age = ParseAge(older_than);
    if (!age.ok()) throw CLI::ValidationError("--older-than", std::string(age.status().message()));
    prune_o.older_than_ms = *age;
    run = [&] { return moe::client::RunPrune(prune_o); };
  });

  moe::client::ExportOptions export_o;
  CLI::App* exp = AddCommand(app, "export", "export JOB_OR_CHECKPOINT_DIR --format hf OUT_DIR [--dtype fp32|bf16]",
                             "write a job's newest checkpoint (or a checkpoint directory) as a Hugging Face "
                             "model directory (MixtralForCausalLM) that transformers loads; run it where "
                             "the checkpoints are");
  exp->add_option("SOURCE", export_o.source, "a job id or a checkpoint directory")->required();
  exp->add_option("OUT_DIR", export_o.out_dir, "the directory to create (absent or empty)")->required();
  exp->add_option("--format", export_o.format, "the format: hf (Hugging Face transformers)")
      ->required()
      ->check(CLI::IsMember({"hf"}));
  exp->add_option("--dtype", export_o.dtype, "weights as fp32 (default) or bf16")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  exp->callback([&] { run = [&] { return moe::client::RunExport(export_o); }; });

  std::string shell;
  CLI::App* completion = AddCommand(app, "completion", "completion bash",
                                    "print a bash completion script: source <(moectl completion bash)");
  completion->add_option("SHELL", shell, "the shell (bash)")
      ->required()
      ->check(CLI::IsMember({"bash"}));
  completion->callback([&] {
    run = [&] {
      std::fputs(BashCompletion(app).c_str(), stdout);
      return 0;
    };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return WithOutputChecked(app.exit(e) == 0 ? 0 : 2);
  } catch (const CLI::ParseError& e) {
    std::vector<CLI::App*> chosen = app.get_subcommands();
    const std::string word = CommandWord(argc, argv);
    if (chosen.empty() && !word.empty()) {  // "A subcommand is required" would not name it
      const std::string near = NearestCommand(app, word);
      std::fprintf(stderr, "moectl: unknown command '%s'%s\nusage: moectl [--server HOST:PORT] COMMAND [ARGS]  "
                   "(moectl --help lists the commands)\n",
                   absl::CHexEscape(word).c_str(), near.empty() ? "" : absl::StrCat("; did you mean '", near, "'?").c_str());
      return 2;
    }
    const std::string usage =
        chosen.empty() ? "usage: moectl [--server HOST:PORT] COMMAND [ARGS]  (moectl --help)"
                       : chosen.front()->get_footer();
    std::fprintf(stderr, "moectl%s%s: %s\n%s\n", chosen.empty() ? "" : " ",
                 chosen.empty() ? "" : chosen.front()->get_name().c_str(), PlainParseError(e.what()).c_str(),
                 usage.c_str());
    return 2;
  }
  if (!server.empty()) moe::client::SetServerOverride(server);
  return WithOutputChecked(run ? run() : 2);
}
