#!/usr/bin/env bash
# Runs moed on a Slurm login node without systemd (as an ordinary user): in the background, in a
# session of its own (so logging out does not stop it), with its state on a shared file system
# the compute nodes see, listening where the compute nodes can reach it.
#
# Usage: deploy/slurm/run-moed-on-login-node.sh start|stop|status
# Env:   MOE_STATE_DIR  shared directory for moed's state and job folders (required for start;
#                       e.g. /shared/$USER/moed: workers read spec.json and write checkpoints there)
#        MOE_BIN_DIR    where moed and moe-worker are, same path on every node (default: beside
#                       this checkout's build/bin)
#        MOE_PORT       gRPC port (default 50051); moed listens on all interfaces, and ranks
#                       report to <this host's name>:MOE_PORT
#        MOE_SLURM_MPI  pmix (default: srun --mpi=pmix) or mpirun (mpirun inside the allocation)
# A token is created in $MOE_STATE_DIR/token on first start (mode 600); moectl on the login node
# finds it through MOE_TOKEN=$(cat $MOE_STATE_DIR/token).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${MOE_BIN_DIR:-$ROOT/build/bin}
STATE=${MOE_STATE_DIR:-}
PORT=${MOE_PORT:-50051}
PIDFILE=${STATE:+$STATE/moed.pid}

running() { [ -n "$PIDFILE" ] && [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
  start)
    [ -n "$STATE" ] || { echo "set MOE_STATE_DIR to a directory on a shared file system" >&2; exit 2; }
    command -v sbatch >/dev/null || { echo "sbatch is not on PATH: is this a Slurm login node?" >&2; exit 1; }
    [ -x "$BIN/moed" ] && [ -x "$BIN/moe-worker" ] || { echo "no moed/moe-worker in $BIN (set MOE_BIN_DIR)" >&2; exit 1; }
    if running; then echo "moed already runs (pid $(cat "$PIDFILE"))"; exit 0; fi
    mkdir -p "$STATE"
    if [ ! -s "$STATE/token" ]; then
      (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STATE/token")
    fi
    ROOT_FLAG=(); [ "$(id -u)" = 0 ] && ROOT_FLAG=(--allow-root)  # the one-machine test cluster
    setsid "$BIN/moed" --state-dir "$STATE" --listen "0.0.0.0:$PORT" --metrics-listen "" \
      --token-file "$STATE/token" --worker-bin "$BIN/moe-worker" \
      --slurm-mpi "${MOE_SLURM_MPI:-pmix}" --max-ranks 1 "${ROOT_FLAG[@]}" \
      </dev/null >>"$STATE/moed.log" 2>&1 &
    echo $! > "$PIDFILE"
    sleep 1
    running || { echo "moed exited; see $STATE/moed.log" >&2; tail -5 "$STATE/moed.log" >&2; exit 1; }
    echo "moed runs (pid $(cat "$PIDFILE")), log $STATE/moed.log"
    echo "export MOE_SERVER=$(hostname):$PORT MOE_TOKEN=\$(cat $STATE/token)"
    ;;
  stop)
    # Jobs keep running in Slurm; the next moed finds them again by their Slurm job ids.
    if running; then kill -TERM "$(cat "$PIDFILE")"; echo "moed stopped"; else echo "moed is not running"; fi
    ;;
  status)
    if running; then echo "moed runs (pid $(cat "$PIDFILE"))"; else echo "moed is not running"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
