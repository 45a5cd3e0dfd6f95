#include "kernels/cuda/common.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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

cudaStream_t NewStream(StreamPriority priority) {
  // Lower numbers are higher priorities: greatest <= least (both 0 where a GPU has one level).
  int least = 0, greatest = 0;
  MOE_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  const char* env = std::getenv("MOE_STREAM_PRIORITY");
  int level = least;
  if (env == nullptr || std::strcmp(env, "0") != 0) {
    switch (priority) {
      case StreamPriority::kComm: level = greatest; break;
      case StreamPriority::kCompute: level = std::min(greatest + 1, least); break;
      case StreamPriority::kBackground: level = least; break;
    }
  }
  cudaStream_t s = nullptr;
  MOE_CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, level));
  return s;
}

double PeakDenseFlops(bool tensor_bf16) {
  int dev = 0, sms = 0, khz = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  // The published dense bf16 peaks of the parts MODEL.md measures against (their spec clocks
  // sit below the maximum clock the device reports): H100 SXM and H200 SXM (132 SMs), H100
  // PCIe (114 SMs), A100 (108 SMs).
  if (tensor_bf16 && major == 9 && sms == 132) return 989.4e12;
  if (tensor_bf16 && major == 9 && sms == 114) return 756.0e12;
  if (tensor_bf16 && major == 8 && minor == 0 && sms == 108) return 312.0e12;
  // Otherwise: dense FLOPs per SM per clock (an FMA is two) at the maximum SM clock.
  double per_sm = 0;
  if (tensor_bf16) {
    if (major == 8) per_sm = minor == 0 ? 2048 : 1024;  // A100; Ampere/Ada consumer and workstation
    if (major == 9) per_sm = 4096;                      // Hopper
    if (major == 10) per_sm = 8192;                     // Blackwell data center
  } else {
    if (major == 8) per_sm = minor == 0 ? 128 : 256;  // 64 or 128 fp32 lanes
    if (major == 9 || major == 10) per_sm = 256;
  }
  return per_sm * sms * khz * 1e3;
}

}  // namespace moe::cuda
