// Stop and checkpoint requests from signals: SIGTERM/SIGINT (cancel: checkpoint, then exit) and
// SIGUSR1 (Slurm's pre-timeout signal: checkpoint, keep going). The trainer polls these at step
// boundaries and agrees on them with the other ranks before acting.
#pragma once

namespace moe {

void InstallSignalHandlers();
bool StopRequested();        // SIGTERM or SIGINT seen
bool CheckpointRequested();  // SIGUSR1 seen since the last call (clears it)

}  // namespace moe
