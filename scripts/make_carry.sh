#!/usr/bin/env bash
# Fills .carry/ (git-ignored) with what scripts/device_check.sh needs on the GPU machine: the
# worker binary, the GPU tests and the benchmark (when built), the shared libraries that
# machine's image lacks (gRPC, Abseil, yaml-cpp, OpenBLAS, ...; MPI, protobuf, CUDA, libc and
# friends are there), the corpus and the PyTorch peer.
#   BUILD_DIR=build-cuda bash scripts/make_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
rm -rf .carry && mkdir -p .carry/bin .carry/lib .carry/data .carry/shared/data/tinyshakespeare
bins=("$BUILD_DIR/bin/moe-worker")
for extra in "$BUILD_DIR/bin/moe_bench" "$BUILD_DIR/tests/cuda_ops_test" "$BUILD_DIR/tests/cuda_model_test"; do
  [[ -x $extra ]] && bins+=("$extra")
done
for b in "${bins[@]}"; do cp "$b" .carry/bin/ && strip ".carry/bin/$(basename "$b")"; done
cp ../shared/data/tinyshakespeare/input.txt .carry/data/
cp ../shared/data/tinyshakespeare/input.txt .carry/shared/data/tinyshakespeare/  # MOE_SHARED_DIR for tests
cp ../shared/bench/reference_moe.py .carry/
for b in "${bins[@]}"; do ldd "$b"; done | awk '/=>/{print $3}' | sort -u |
  grep -vE "/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|libmpi|libmpi_cxx|libopen-pal|libopen-rte|libhwloc|libevent[^/]*|libz|libssl|libcrypto|libudev|libltdl|libsystemd|libcap|libgcrypt|liblzma|libzstd|liblz4|libgpg-error|libcuda|libcudart|libcublas|libcublasLt|libnvrtc)\.so" |
  while read -r lib; do cp -L "$lib" .carry/lib/; done
# The working tree that travels is capped (64 MiB): the libraries go compressed;
# device_check.sh unpacks them.
tar -C .carry -cJf .carry/lib.tar.xz lib && rm -rf .carry/lib
du -sh .carry
