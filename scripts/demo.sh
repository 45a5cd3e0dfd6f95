#!/usr/bin/env bash
# The main job, end to end on this machine's CPU: set up, start moed (or use the one at
# $MOE_SERVER), submit examples/cpu-demo.yaml (a 2-rank MoE on the King James Bible), follow its
# logs to the end, show its metrics and a sample of generated text. A moed the demo started is
# stopped at the end unless KEEP_MOED=1 (then `bash scripts/demo.sh stop` stops it).
# Usage: bash scripts/demo.sh [JOB.yaml]      KEEP_MOED=1 bash scripts/demo.sh
#        bash scripts/demo.sh stop            stops the moed a demo left running
set -euo pipefail
cd "$(dirname "$0")/.."
STATE_DIR=${MOE_STATE_DIR:-$PWD/.moed}

stop_moed() {
  local pid
  pid=$(cat "$STATE_DIR/moed.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "demo: stopped moed (pid $pid)"
  else
    echo "demo: no moed started by the demo is running"
  fi
  rm -f "$STATE_DIR/moed.pid"
}
if [ "${1:-}" = stop ]; then
  stop_moed
  exit 0
fi

bash scripts/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

JOB=${1:-examples/cpu-demo.yaml}
BIN=build/bin
build/bin/moectl validate "$JOB"

if [ -z "${MOE_SERVER:-}" ]; then
  export MOE_SERVER=127.0.0.1:${MOE_PORT:-50051}
  if ! "$BIN/moectl" list >/dev/null 2>&1; then
    mkdir -p "$STATE_DIR"
    echo "demo: starting moed on $MOE_SERVER (state in $STATE_DIR, log in $STATE_DIR/moed.log)"
    # moed refuses root unless told (--allow-root): the demo runs as root on a fresh machine.
    ROOT_FLAG=(); [ "$(id -u)" = 0 ] && ROOT_FLAG=(--allow-root)
    nohup "$BIN/moed" --listen "$MOE_SERVER" --state-dir "$STATE_DIR" --metrics-listen 127.0.0.1:${MOE_METRICS_PORT:-9464} \
      "${ROOT_FLAG[@]}" >>"$STATE_DIR/moed.log" 2>&1 &
    echo $! >"$STATE_DIR/moed.pid"
    if [ "${KEEP_MOED:-0}" != 1 ]; then trap stop_moed EXIT; fi
    echo "demo: dashboard at http://127.0.0.1:${MOE_METRICS_PORT:-9464}/"
    for _ in $(seq 50); do "$BIN/moectl" list >/dev/null 2>&1 && break; sleep 0.2; done
  fi
fi

JOB_ID=$("$BIN/moectl" submit "$JOB")
echo "demo: submitted $JOB as $JOB_ID; following its logs"
"$BIN/moectl" logs "$JOB_ID" -f
"$BIN/moectl" status "$JOB_ID"
"$BIN/moectl" metrics "$JOB_ID"
# The checkpoints sit in the job's folder on the moed host (moectl status prints it as "dir").
JOB_DIR=$("$BIN/moectl" status "$JOB_ID" | awk '$1 == "dir" {print $2}')
if [ -d "$JOB_DIR/checkpoints" ]; then
  echo "demo: a sample from the newest checkpoint in $JOB_DIR/checkpoints"
  "$BIN/moe-worker" --sample "$JOB_DIR/checkpoints" --prompt "And God said" --tokens 300
else
  echo "demo: no checkpoints in '$JOB_DIR/checkpoints' on this machine (moed runs elsewhere?); skipping the sample"
fi
