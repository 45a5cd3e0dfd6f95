#include "worker/train/signals.h"

#include <csignal>

namespace moe {
namespace {

volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_checkpoint = 0;

void OnStop(int) { g_stop = 1; }
void OnCheckpoint(int) { g_checkpoint = 1; }

}  // namespace

void InstallSignalHandlers() {
  struct sigaction sa = {};
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sa.sa_handler = OnStop;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sa.sa_handler = OnCheckpoint;
  sigaction(SIGUSR1, &sa, nullptr);
}

bool StopRequested() { return g_stop != 0; }

bool CheckpointRequested() {
  bool requested = g_checkpoint != 0;
  g_checkpoint = 0;
  return requested;
}

}  // namespace moe
