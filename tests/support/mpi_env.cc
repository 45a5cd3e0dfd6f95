#include "tests/support/mpi_env.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

namespace moe::testing {

void MpiEnvironment::SetUp() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  owns_mpi_ = true;
}

void MpiEnvironment::TearDown() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_mpi_ && !finalized) MPI_Finalize();
  owns_mpi_ = false;
}

int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int WorldSize() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

CommOptions TestCommOptions() {
  CommOptions opts;
  opts.timeout_seconds = 120;
  if (const char* env = std::getenv("MOE_COMM_TIMEOUT_S")) {
    char* end = nullptr;
    const double seconds = std::strtod(env, &end);
    if (end == env || *end != '\0' || !(seconds > 0)) {
      std::fprintf(stderr, "MOE_COMM_TIMEOUT_S=%s is not a positive number of seconds\n", env);
      std::abort();
    }
    opts.timeout_seconds = seconds;
  }
  return opts;
}

}  // namespace moe::testing
