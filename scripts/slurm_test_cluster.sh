#!/usr/bin/env bash
# A one-machine Slurm cluster for tests and trials: installs Debian's munge, slurmctld, slurmd and
# slurm-client when missing, writes deploy/slurm/slurm.conf.example (filled in) into a state
# directory, and runs munged, slurmctld and slurmd there as root in the background (no systemd).
#
# Usage: scripts/slurm_test_cluster.sh start    install if needed, start, wait until the node is idle
#        scripts/slurm_test_cluster.sh stop     cancel every job, stop the three daemons
#        scripts/slurm_test_cluster.sh status   exit 0 when the cluster answers
#        scripts/slurm_test_cluster.sh env      print the SLURM_CONF=... line clients need
# Env: MOE_SLURM_DIR (default /tmp/moe-slurm), MOE_SLURM_CTLD_PORT (6817), MOE_SLURM_SLURMD_PORT
# (6818). start is idempotent: a cluster that already answers is left as it is.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${MOE_SLURM_DIR:-/tmp/moe-slurm}
CTLD_PORT=${MOE_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${MOE_SLURM_SLURMD_PORT:-6818}
export SLURM_CONF="$DIR/etc/slurm.conf"
HOST=$(hostname -s)

say() { echo "slurm_test_cluster: $*" >&2; }
die() { say "$*"; exit 1; }

# Pid from a pid file, when that process still runs.
live_pid() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

answers() { timeout 10 sinfo -h -o %T >/dev/null 2>&1; }

install_packages() {
  local missing=() p
  for p in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Debian's maintainer scripts try to start the services; there is no init system to do it here.
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
}

write_config() {
  local mem cpus
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)  # half of RAM, in MB
  mkdir -p "$DIR"/{etc,munge,state,spool,run,log}
  chmod 700 "$DIR/munge"
  sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem|g" -e "s|@DIR@|$DIR|g" \
      -e "s|@EPILOG@|$ROOT/deploy/slurm/epilog.sh|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
      -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
      "$ROOT/deploy/slurm/slurm.conf.example" > "$SLURM_CONF.tmp"
  mv "$SLURM_CONF.tmp" "$SLURM_CONF"
  chmod 644 "$SLURM_CONF"
}

start_munge() {
  if live_pid "$DIR/munge/munged.pid" >/dev/null; then return 0; fi
  if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$DIR/munge/munge.key"
  # --force: munged objects to running as root and to a socket below world-writable /tmp.
  munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket.2" \
         --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
         --seed-file="$DIR/munge/munged.seed" ||
    die "munged did not start (see $DIR/log/munged.log)"
}

wait_idle() {
  local deadline=$((SECONDS + 60)) state=""
  while ((SECONDS < deadline)); do
    state=$(timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle|mixed|allocated) return 0 ;;
      down*|drain*|drained*)
        timeout 10 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "node $HOST is not idle after 60 s (state '$state'); see $DIR/log/slurmctld.log and slurmd.log"
}

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd runs jobs as their users)"
  install_packages
  if [ -f "$SLURM_CONF" ] && answers && live_pid "$DIR/run/slurmd.pid" >/dev/null; then
    wait_idle
    say "already running (SLURM_CONF=$SLURM_CONF)"
    return 0
  fi
  write_config
  start_munge
  if ! live_pid "$DIR/run/slurmctld.pid" >/dev/null; then
    # -c: forget jobs from an earlier run of this test cluster.
    slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
  fi
  if ! live_pid "$DIR/run/slurmd.pid" >/dev/null; then
    slurmd -c -f "$SLURM_CONF" || die "slurmd did not start (see $DIR/log/slurmd.log)"
  fi
  wait_idle
  say "running: node $HOST idle (SLURM_CONF=$SLURM_CONF)"
}

stop_daemon() {  # name pidfile
  local pid deadline
  pid=$(live_pid "$2") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$1 ($pid) ignored SIGTERM for 20 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

stop() {
  if [ -f "$SLURM_CONF" ] && answers; then
    timeout 10 scancel --full --signal=KILL --state=RUNNING "--user=$(id -un)" 2>/dev/null || true
    timeout 10 scancel "--user=$(id -un)" 2>/dev/null || true
    # Let slurmd run the epilogs of what was just cancelled.
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)) && [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ]; do
      sleep 0.5
    done
  fi
  stop_daemon slurmd "$DIR/run/slurmd.pid"
  stop_daemon slurmctld "$DIR/run/slurmctld.pid"
  stop_daemon munged "$DIR/munge/munged.pid"
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers ;;
  env) echo "SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
