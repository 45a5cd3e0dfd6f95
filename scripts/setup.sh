#!/usr/bin/env bash
# Installs what the build needs (Debian/Ubuntu packages, non-interactive, only when missing),
# then configures and builds into build/. Safe to run again.
# Usage: bash scripts/setup.sh            (BUILD_DIR, BUILD_TYPE, JOBS and CMAKE_ARGS may be set)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config git
  libopenmpi-dev openmpi-bin
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libyaml-cpp-dev libsqlite3-dev sqlite3
  libgtest-dev libgmock-dev libopenblas-dev
  libcivetweb-dev libcli11-dev nlohmann-json3-dev
  bible-kjv curl ca-certificates procps
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

BUILD_DIR=${BUILD_DIR:-build}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
JOBS=${JOBS:-$(nproc)}
# CMAKE_ARGS: more cmake -D options (scripts/test.sh passes -DMOE_DEBUG_INFO=OFF in CI).
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" ${CMAKE_ARGS:-} >/dev/null
bash scripts/fetch_data.sh
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "setup: built $BUILD_DIR/bin/{moed,moectl,moe-worker}"
