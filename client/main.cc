// moectl: the command-line client. main only picks the command; each command lives in its own
// file and returns the process exit code.
#include <cstdio>
#include <cstring>
#include <string>

#include "client/commands.h"
#include "client/connection.h"

namespace {

struct Command {
  const char* name;
  const char* usage;
  int (*run)(int argc, char** argv);  // argv[0] is the command name
};

constexpr Command kCommands[] = {
    {"validate", "validate JOB.yaml            check a job file and describe the job",
     moe::client::RunValidate},
    {"submit", "submit JOB.yaml [--follow]   validate, submit, print the job id (and follow)",
     moe::client::RunSubmit},
    {"list", "list                         every job moed knows", moe::client::RunList},
    {"status", "status [JOB]                 state, step/total, loss, tokens/s, ETA, restarts",
     moe::client::RunStatus},
    {"logs", "logs JOB [-f] [--rank N] [--tail N]  log lines; -f follows until the job ends",
     moe::client::RunLogs},
    {"cancel", "cancel JOB [--no-wait]       stop the job; waits until it is CANCELLED",
     moe::client::RunCancel},
    {"metrics", "metrics JOB [--format table|json|csv]  metric points and a loss plot",
     moe::client::RunMetrics},
};

void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: moectl [--server HOST:PORT] COMMAND [ARGS]\n\n"
               "server: --server, else MOE_SERVER, else `server:` in MOE_CONFIG or\n"
               "~/.config/moe/config.yaml (default 127.0.0.1:50051); token: MOE_TOKEN or `token_file:`\n\n"
               "commands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %s\n", c.usage);
}

}  // namespace

int main(int argc, char** argv) {
  // Global options before the command: --server HOST:PORT (also MOE_SERVER or the config file).
  while (argc >= 2 && std::strncmp(argv[1], "--server", 8) == 0) {
    if (argv[1][8] == '=') {
      moe::client::SetServerOverride(argv[1] + 9);
      --argc;
      ++argv;
    } else if (argv[1][8] == '\0' && argc >= 3) {
      moe::client::SetServerOverride(argv[2]);
      argc -= 2;
      argv += 2;
    } else {
      break;
    }
  }
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    PrintUsage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const Command& c : kCommands) {
    if (std::strcmp(argv[1], c.name) == 0) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "moectl: unknown command '%s'\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}
