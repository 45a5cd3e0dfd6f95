// CPU threading: one knob for OpenMP and OpenBLAS.
#pragma once

namespace moe::kernels {

void SetNumThreads(int n);  // n <= 0: all cores
int NumThreads();

}  // namespace moe::kernels
