// MPI for GoogleTest binaries run under mpirun (tests/*_mpi_test.cc): a gtest Environment
// that starts MPI once per process before the tests and finalises it after them, and the
// communicator options tests use.
//
// Every rank runs every test and checks its own part; register the environment once per
// test file, at namespace scope:
//   static ::testing::Environment* const kMpiEnv =
//       ::testing::AddGlobalTestEnvironment(new moe::testing::MpiEnvironment);
#pragma once

#include <gtest/gtest.h>

#include "worker/parallel/comm.h"

namespace moe::testing {

class MpiEnvironment : public ::testing::Environment {
 public:
  // MPI_Init_thread (FUNNELED) unless MPI is already up; MPI_Finalize in TearDown if it
  // started it. Communicators made in tests must be gone by TearDown (make them per test).
  void SetUp() override;
  void TearDown() override;

 private:
  bool owns_mpi_ = false;
};

// This process's rank and the number of ranks in MPI_COMM_WORLD (MPI must be up).
int WorldRank();
int WorldSize();

// Options for communicators in tests: timeout from env MOE_COMM_TIMEOUT_S (seconds),
// else 120 s, so that a test whose ranks disagree ends instead of waiting 300 s.
CommOptions TestCommOptions();

}  // namespace moe::testing
