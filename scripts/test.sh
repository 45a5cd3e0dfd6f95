#!/usr/bin/env bash
# Sets up (installs, builds) and runs the whole test suite through ctest.
# Usage: bash scripts/test.sh [extra ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# CI builds without debug info (nobody reads it there; it costs a fifth of the build).
if [ -n "${CI:-}" ]; then export CMAKE_ARGS="${CMAKE_ARGS:-} -DMOE_DEBUG_INFO=OFF"; fi
bash scripts/setup.sh
# Tools only the tests use: promtool checks moed's /metrics, headless Chromium renders the
# dashboard (the Slurm tests install Slurm themselves). A tool that cannot be installed makes
# its test skip.
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
test_tool() {  # COMMAND PACKAGE WHY
  command -v "$1" >/dev/null 2>&1 && return 0
  echo "test: installing $2 (for $3)"
  { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null; } ||
    echo "test: could not install $2; the $3 test will skip"
}
test_tool promtool prometheus "promtool check metrics"
test_tool chromium chromium "dashboard in a browser"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" "$@"
