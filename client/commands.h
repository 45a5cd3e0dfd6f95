// The moectl commands; each takes its own argv (argv[0] = command name) and returns the exit code.
#pragma once

namespace moe::client {

// validate JOB.yaml: exit 0 and a description of the job, or exit 2 and every error.
int RunValidate(int argc, char** argv);

}  // namespace moe::client
