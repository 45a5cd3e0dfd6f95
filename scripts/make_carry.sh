#!/usr/bin/env bash
# Fills .carry/ (git-ignored) with what scripts/device_check.sh and scripts/device_service.sh need
# on the GPU machine: moe-worker, moed and moectl, the GPU tests and benchmarks (when built), the
# shared libraries that machine's image lacks or may have at another version, the corpus and the
# PyTorch peer.
#   BUILD_DIR=build-cuda bash scripts/make_carry.sh      (CARRY_DIR=DIR: fill DIR instead)
#   BASE=../base/build/bin/moe_bench VARIANTS="x=../x/build/bin/moe_bench ..." bash scripts/make_carry.sh
#     also carries other trees' moe_bench for scripts/device_ab.sh: BASE as .carry/base/moe_bench,
#     each VARIANTS entry NAME=PATH as .carry/variants/NAME/moe_bench (packed in variants.tar.xz)
# Libraries: everything the binaries load except what the image has for sure: libc and the
# compiler runtime, Open MPI (mpirun must match the libmpi the ranks load), OpenSSL, zlib and
# friends, and CUDA and NCCL (the toolkit or PyTorch's nvidia wheels; NCCL alone is bigger than
# the 64 MiB a call carries). gRPC, Abseil, protobuf (the image's 3.21 is another build of the same
# soname), yaml-cpp, SQLite, OpenBLAS and the like go along, as .carry/lib.tar.xz (the scripts
# unpack it).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
CARRY=${CARRY_DIR:-.carry}
rm -rf "$CARRY" && mkdir -p "$CARRY/bin" "$CARRY/lib" "$CARRY/data" "$CARRY/shared/data/tinyshakespeare"
bins=("$BUILD_DIR/bin/moe-worker" "$BUILD_DIR/bin/moed" "$BUILD_DIR/bin/moectl")
# Every GPU test (tests/cuda_*_test.cc, comm_nccl_mpi_test) and the benchmarks, when built.
for extra in "$BUILD_DIR/bin/moe_bench" "$BUILD_DIR/bin/a2a_bench" "$BUILD_DIR"/tests/cuda_*_test \
             "$BUILD_DIR/tests/comm_nccl_mpi_test"; do
  [[ -x $extra ]] && bins+=("$extra")
done
for b in "${bins[@]}"; do cp "$b" "$CARRY/bin/" && strip "$CARRY/bin/$(basename "$b")"; done
cp ../shared/data/tinyshakespeare/input.txt "$CARRY/data/"
cp ../shared/data/tinyshakespeare/input.txt "$CARRY/shared/data/tinyshakespeare/"  # MOE_SHARED_DIR for tests
cp ../shared/bench/reference_moe.py ../shared/bench/nccl_ceiling.py "$CARRY/"
# The KJV demo text and GPT-2's BPE (scripts/fetch_data.sh), for the recipe runs, when fetched.
if [[ -s data/bible-kjv.txt && -s data/gpt2/encoder.json ]]; then
  mkdir -p "$CARRY/data/gpt2"
  cp data/bible-kjv.txt "$CARRY/data/" && cp data/gpt2/encoder.json data/gpt2/vocab.bpe "$CARRY/data/gpt2/"
fi
for b in "${bins[@]}"; do ldd "$b"; done | awk '/=>/{print $3}' | sort -u |
  grep -vE "/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|libmpi|libmpi_cxx|libopen-pal|libopen-rte|libhwloc|libevent[^/]*|libz|libssl|libcrypto|libudev|libltdl|libsystemd|libcap|libgcrypt|liblzma|libzstd|liblz4|libgpg-error|libcuda|libcudart|libcublas|libcublasLt|libnvrtc|libnccl)\.so" |
  while read -r lib; do cp -L "$lib" "$CARRY/lib/"; done
echo "make_carry: $(ls "$CARRY/bin" | tr '\n' ' ')"
echo "make_carry: $(ls "$CARRY/lib" | wc -l) libraries: $(ls "$CARRY/lib" | sed 's/\.so.*//' | sort -u | tr '\n' ' ')"
# The working tree that travels is capped (64 MiB in all): the libraries and the binaries (each
# GPU test links every kernel, ~17 MB stripped) go compressed; scripts/device_env.sh unpacks them.
tar -C "$CARRY" -cJf "$CARRY/lib.tar.xz" lib && rm -rf "$CARRY/lib"
tar -C "$CARRY" -cf - bin | xz -T0 -6 > "$CARRY/bin.tar.xz" && rm -rf "$CARRY/bin"
if [[ -n ${BASE:-} ]]; then
  mkdir -p "$CARRY/base" && cp "$BASE" "$CARRY/base/moe_bench" && strip "$CARRY/base/moe_bench"
fi
if [[ -n ${VARIANTS:-} ]]; then
  for v in $VARIANTS; do
    name=${v%%=*} path=${v#*=}
    if [[ $name == "$v" || -z $name || ! -x $path ]]; then
      echo "make_carry: VARIANTS entry '$v': want NAME=PATH of a moe_bench binary" >&2
      exit 1
    fi
    mkdir -p "$CARRY/variants/$name" && cp "$path" "$CARRY/variants/$name/moe_bench" && strip "$CARRY/variants/$name/moe_bench"
  done
  tar -C "$CARRY" -cf - variants | xz -T0 -6 > "$CARRY/variants.tar.xz" && rm -rf "$CARRY/variants"
fi
size=$(du -sm "$CARRY" | cut -f1)
du -sh "$CARRY"/*
echo "make_carry: $size MiB in $CARRY"
if (( size > 60 )); then
  echo "make_carry: $CARRY is $size MiB; with the working tree it must stay under 64 MiB (leave out a test or bench binary)" >&2
  exit 1
fi
