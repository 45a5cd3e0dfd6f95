// The memory of the GPUs moed runs cuda jobs on: moed --gpu-memory, else what nvidia-smi says
// (the smallest of them), else unknown. Scheduler::Submit checks a cuda job's memory estimate
// against it (common/memory_fit.h).
#pragma once

#include <cstdint>
#include <string>

namespace moe::daemon {

// nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits: one line per GPU in MiB ->
// the smallest GPU's bytes; 0 when the text holds no number.
int64_t SmallestGpuMemory(const std::string& nvidia_smi_output);

// Runs nvidia-smi when it is on PATH; 0 when it is absent or says nothing useful.
int64_t QueryGpuMemory();

}  // namespace moe::daemon
