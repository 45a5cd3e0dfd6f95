// moectl: the command-line client. main only picks the command; each command lives in its own
// file and returns the process exit code.
#include <cstdio>
#include <cstring>
#include <string>

#include "client/commands.h"

namespace {

struct Command {
  const char* name;
  const char* usage;
  int (*run)(int argc, char** argv);  // argv[0] is the command name
};

constexpr Command kCommands[] = {
    {"validate", "validate JOB.yaml            check a job file and describe the job",
     moe::client::RunValidate},
};

void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: moectl [--server HOST:PORT] COMMAND [ARGS]\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %s\n", c.usage);
}

}  // namespace

int main(int argc, char** argv) {
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
