// How long this process's host has waited for the MoE layers' expert counts (the one
// device-to-host wait inside a step's forward, moe_layer.cc), summed: moe_bench reports it per step.
// A host that hardly waits there is late with the kernels after each wait, and the GPU idles until
// they come.
#pragma once

namespace moe {

inline double& CountsWaitSeconds() {
  static double seconds = 0;
  return seconds;
}

}  // namespace moe
