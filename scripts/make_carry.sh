#!/usr/bin/env bash
# Fills .carry/ (git-ignored) with what scripts/device_check.sh needs on the GPU machine: the
# worker binary, the shared libraries that machine's image lacks (gRPC, Abseil, yaml-cpp,
# OpenBLAS, ...; MPI, protobuf, libc and friends are there), the corpus and the PyTorch peer.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
rm -rf .carry && mkdir -p .carry/bin .carry/lib .carry/data
cp "$BUILD_DIR/bin/moe-worker" .carry/bin/ && strip .carry/bin/moe-worker
cp ../shared/data/tinyshakespeare/input.txt .carry/data/
cp ../shared/bench/reference_moe.py .carry/
ldd "$BUILD_DIR/bin/moe-worker" | awk '/=>/{print $3}' |
  grep -vE "/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|libmpi|libmpi_cxx|libopen-pal|libopen-rte|libhwloc|libevent[^/]*|libz|libssl|libcrypto|libudev|libltdl|libsystemd|libcap|libgcrypt|liblzma|libzstd|liblz4|libgpg-error)\.so" |
  while read -r lib; do cp -L "$lib" .carry/lib/; done
du -sh .carry
