// a2a_bench: our NCCL DeviceCommunicator against the ceiling that ../shared/bench/nccl_ceiling.py
// measures through torch.distributed, with its sizes and formulas, on bf16 buffers:
//   elements  = MB * 2^20 / 2, less elements % W (one equal block of elements / W per peer)
//   bytes     = elements * 2 (the whole send buffer of one rank)
//   algbw     = bytes / time / 1e9 (GB/s); time is per call
//   busbw     = algbw * (W - 1) / W for the all-to-all, algbw * 2 (W - 1) / W for the all-reduce
// Per size: 5 warm-up calls, then --iters calls between two CUDA events (the ceiling: 5 and 20,
// wall time between synchronisations). Rank 0 prints one JSON line per size and collective.
//   mpirun -np W a2a_bench [--sizes-mb 1,4,16,64,256] [--iters 20]
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "kernels/cuda/common.h"
#include "worker/parallel/comm_mpi.h"
#include "worker/parallel/comm_nccl.h"

namespace {

constexpr int kWarmup = 5;  // nccl_ceiling.py's warm-up

// Seconds per call of `call`, over `iters` calls after the warm-up, timed on `stream`.
template <typename Call>
double TimePerCall(moe::Communicator* host, moe::DeviceCommunicator* dev, cudaStream_t stream,
                   int iters, Call call) {
  for (int i = 0; i < kWarmup; ++i) call();
  dev->Wait(stream, "bench warm-up");
  host->Barrier();  // every rank starts the timed calls together
  cudaEvent_t start, stop;
  MOE_CUDA_CHECK(cudaEventCreate(&start));
  MOE_CUDA_CHECK(cudaEventCreate(&stop));
  MOE_CUDA_CHECK(cudaEventRecord(start, stream));
  for (int i = 0; i < iters; ++i) call();
  MOE_CUDA_CHECK(cudaEventRecord(stop, stream));
  dev->Wait(stream, "bench timed calls");
  float ms = 0;
  MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  MOE_CUDA_CHECK(cudaEventDestroy(start));
  MOE_CUDA_CHECK(cudaEventDestroy(stop));
  return ms * 1e-3 / iters;
}

void PrintRow(const char* bench, int world, int64_t mb, int64_t bytes, int iters, double seconds,
              double bus_factor, const char* gpu) {
  const double algbw = bytes / seconds / 1e9;
  std::printf(
      "{\"bench\":\"%s\",\"world\":%d,\"mb\":%lld,\"bytes\":%lld,\"iters\":%d,\"time_us\":%.1f,"
      "\"algbw_gbps\":%.2f,\"busbw_gbps\":%.2f,\"gpu\":\"%s\"}\n",
      bench, world, static_cast<long long>(mb), static_cast<long long>(bytes), iters, seconds * 1e6,
      algbw, algbw * bus_factor, gpu);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> sizes_mb = {1, 4, 16, 64, 256};  // nccl_ceiling.py's
  int iters = 20;
  bool ok = true;
  for (int i = 1; i < argc && ok; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--sizes-mb" && has_value) {
      sizes_mb.clear();
      for (absl::string_view s : absl::StrSplit(argv[++i], ',')) {
        int64_t mb = 0;
        ok = ok && absl::SimpleAtoi(s, &mb) && mb > 0;
        sizes_mb.push_back(mb);
      }
    } else if (a == "--iters" && has_value && absl::SimpleAtoi(argv[i + 1], &iters) && iters > 0) {
      ++i;
    } else {
      ok = false;
    }
  }
  if (!ok) {
    std::fprintf(stderr, "usage: mpirun -np W a2a_bench [--sizes-mb 1,4,16,64,256] [--iters 20]\n");
    return 2;
  }

  const moe::CommOptions options;
  std::unique_ptr<moe::Communicator> host = moe::CreateMpiCommunicator(options);
  auto made = moe::DeviceCommunicator::Create(host.get(), options);
  if (!made.ok()) {
    std::fprintf(stderr, "a2a_bench rank %d: %s\n", host->rank(),
                 std::string(made.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<moe::DeviceCommunicator> dev = std::move(*made);
  const int world = dev->world_size();
  cudaDeviceProp prop;
  MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev->device()));
  cudaStream_t stream;
  MOE_CUDA_CHECK(cudaStreamCreate(&stream));

  for (const int64_t mb : sizes_mb) {
    int64_t elements = mb * (int64_t{1} << 20) / 2;
    elements -= elements % world;
    const int64_t bytes = elements * 2;
    void *x, *y;
    MOE_CUDA_CHECK(cudaMalloc(&x, bytes));
    MOE_CUDA_CHECK(cudaMalloc(&y, bytes));
    MOE_CUDA_CHECK(cudaMemset(x, 0, bytes));  // contents do not change NCCL's speed
    const std::vector<int64_t> counts(world, elements / world);
    const double a2a = TimePerCall(host.get(), dev.get(), stream, iters, [&] {
      dev->AllToAllV(x, counts.data(), y, counts.data(), moe::DeviceDType::kBF16, stream);
    });
    const double ar = TimePerCall(host.get(), dev.get(), stream, iters, [&] {
      dev->AllReduceSum(x, elements, moe::DeviceDType::kBF16, stream);
    });
    if (dev->rank() == 0) {
      PrintRow("a2a", world, mb, bytes, iters, a2a, (world - 1.0) / world, prop.name);
      PrintRow("allreduce", world, mb, bytes, iters, ar, 2.0 * (world - 1) / world, prop.name);
    }
    MOE_CUDA_CHECK(cudaFree(x));
    MOE_CUDA_CHECK(cudaFree(y));
  }
  MOE_CUDA_CHECK(cudaStreamDestroy(stream));
  dev.reset();  // before MPI goes with the host communicator
  return 0;
}
