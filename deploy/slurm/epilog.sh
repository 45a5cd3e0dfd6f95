#!/usr/bin/env bash
# Slurm Epilog (slurm.conf: Epilog=/path/to/epilog.sh): runs as root on every node of a job after
# the job ends there. It makes sure no process of the job is left, above all none holding a GPU:
# a rank that left its process tree (setsid, double fork) or hangs in the driver would keep the
# GPU's memory and slow or break the next job on it.
#   1. SIGKILL every process whose environment says SLURM_JOB_ID=<this job>.
#   2. Wait up to MOE_EPILOG_WAIT seconds (default 30) for them to be gone.
#   3. If one is left (unkillable, e.g. stuck in the GPU driver), exit 1: Slurm then drains the
#      node with reason "Epilog error", so no new job lands on a GPU that is still held; an
#      admin looks at it (nvidia-smi) and resumes the node.
set -u
job=${SLURM_JOB_ID:-}
[ -n "$job" ] || { echo "epilog: SLURM_JOB_ID is not set" >&2; exit 0; }
wait_s=${MOE_EPILOG_WAIT:-30}

# Pids of the job's processes, not counting this script and what it runs.
job_pids() {
  local p pid
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] && continue
    [ "$(awk '{print $4}' "$p/stat" 2>/dev/null)" = "$$" ] && continue  # our own children
    grep -qzx "SLURM_JOB_ID=$job" "$p/environ" 2>/dev/null && echo "$pid"
  done
}

# The GPU devices a pid holds open (/dev/nvidiaN), for the log.
gpus_held() {
  local fd out=""
  for fd in /proc/"$1"/fd/*; do
    case "$(readlink "$fd" 2>/dev/null)" in
      /dev/nvidia[0-9]*) out="$out $(readlink "$fd")" ;;
    esac
  done
  echo "$out" | tr ' ' '\n' | sort -u | tr '\n' ' '
}

pids=$(job_pids)
[ -z "$pids" ] && exit 0
for pid in $pids; do
  echo "epilog: job $job left pid $pid ($(tr '\0' ' ' < /proc/"$pid"/cmdline 2>/dev/null | cut -c1-200))$(g=$(gpus_held "$pid"); [ -n "${g// }" ] && echo " holding $g"); SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null
done
deadline=$((SECONDS + wait_s))
while ((SECONDS < deadline)); do
  pids=$(job_pids)
  [ -z "$pids" ] && exit 0
  sleep 0.5
done
for pid in $pids; do
  echo "epilog: job $job: pid $pid survives SIGKILL for ${wait_s} s$(g=$(gpus_held "$pid"); [ -n "${g// }" ] && echo " and holds $g"); draining this node" >&2
done
exit 1
