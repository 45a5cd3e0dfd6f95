#include "kernels/cuda/common.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace moe::cuda {

void CheckCuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  std::fprintf(stderr, "CUDA error on %s at %s:%d: %s: %s\n", host, file, line, what,
               cudaGetErrorString(err));
  std::fflush(stderr);
  std::abort();
}

bool HaveGpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
}

}  // namespace moe::cuda
