#!/usr/bin/env bash
# The service end to end on the GPU machine: moed, moectl and the workers from .carry/ (filled here
# by scripts/make_carry.sh). Run from the repo root there:
#   bash scripts/device_service.sh
# 1. starts moed (temp state dir, free port) and submits a device: cuda job over every GPU
#    (ranks = RANKS, default the nvidia-smi GPU count; experts 8, or a multiple of the ranks;
#    d_model 256, 4 layers, tiny Shakespeare, 200 steps, bf16), follows its logs, requires
#    SUCCEEDED, prints moectl status and metrics (per-expert load per GPU);
# 2. submits a long job, waits until it is RUNNING with its step advancing, cancels it, requires
#    CANCELLED, no GPU process (nvidia-smi) and no moe-worker / mpirun left.
# Prints PASS/FAIL lines and a summary; exits 1 on any failure; always cancels its jobs and stops
# moed. Logs go to $OUT (default: the temp dir).
# Overrides: RANKS, STEPS, LONG_STEPS, D_MODEL, N_LAYERS, SEQ_LEN, BATCH, BIN (default .carry/bin),
# DATA, JOB_TIMEOUT (s, default 900), and DEVICE=cpu for a dry run on a machine without GPUs
# (with BIN=build/bin; no nvidia-smi checks).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
BIN=${BIN:-.carry/bin}
WORK=$(mktemp -d /tmp/moe-service.XXXXXX)
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
if [[ $DEVICE == cuda ]]; then
  # Unpacks .carry/lib.tar.xz; LD_LIBRARY_PATH, NCCL_NVLS_ENABLE=0, MOE_SHARED_DIR, mpirun as root.
  source scripts/device_env.sh
else
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export MOE_CACHE_DIR=$WORK/cache  # the tokenized corpus

FAILED=0
SUMMARY=()
pass() { echo "PASS $*"; SUMMARY+=("PASS $*"); }
fail() { echo "FAIL $*"; SUMMARY+=("FAIL $*"); FAILED=1; }
finish() {
  echo
  echo "== summary (logs in $OUT)"
  printf '%s\n' "${SUMMARY[@]}"
  if [[ $FAILED == 0 ]]; then echo "device_service: PASS"; else echo "device_service: FAIL"; fi
}

for b in moed moectl moe-worker; do
  [[ -x $BIN/$b ]] || { fail "binary $BIN/$b is missing (fill .carry with scripts/make_carry.sh)"; finish; exit 1; }
  if ldd "$BIN/$b" | grep "not found"; then fail "$BIN/$b misses shared libraries (above)"; finish; exit 1; fi
done
GPU_APPS() { nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | grep -v '^$'; }
if [[ $DEVICE == cuda ]]; then
  nvidia-smi -L | tee "$OUT/gpus.txt"
  GPUS=$(nvidia-smi -L | wc -l)
  RANKS=${RANKS:-$GPUS}
  PRECISION=bf16
  if [[ -n $(GPU_APPS) ]]; then echo "device_service: GPU processes before the start:"; GPU_APPS; fi
else
  RANKS=${RANKS:-2}
  PRECISION=fp32
fi
EXPERTS=$(( RANKS * (8 / RANKS > 0 ? 8 / RANKS : 1) ))  # 8 when the ranks divide it
STEPS=${STEPS:-200}
DATA=${DATA:-$PWD/.carry/data/input.txt}

# moed on a free port, state in the temp dir; its jobs are cancelled and it is stopped on exit.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 50151)
export MOE_SERVER=127.0.0.1:$PORT MOE_CONFIG=$WORK/moectl.yaml
echo "{}" > "$MOE_CONFIG"
JOBS=()
MOED_PID=
cleanup() {
  for id in "${JOBS[@]}"; do "$BIN/moectl" cancel "$id" --wait 90 >/dev/null 2>&1; done
  if [[ -n $MOED_PID ]]; then
    kill "$MOED_PID" 2>/dev/null
    wait "$MOED_PID" 2>/dev/null
  fi
}
trap cleanup EXIT
ROOT_FLAG=(); [ "$(id -u)" = 0 ] && ROOT_FLAG=(--allow-root)  # the lent machines run as root
"$BIN/moed" --state-dir "$WORK/state" --listen "$MOE_SERVER" --metrics-listen= --max-ranks "$RANKS" \
  --cancel-grace 30 "${ROOT_FLAG[@]}" > "$OUT/moed.log" 2>&1 &
MOED_PID=$!
for _ in $(seq 100); do "$BIN/moectl" list > /dev/null 2>&1 && break; sleep 0.2; done
if ! "$BIN/moectl" list > /dev/null 2>&1; then
  cat "$OUT/moed.log"; fail "moed did not start"; finish; exit 1
fi
head -1 "$OUT/moed.log"

# job.yaml NAME STEPS: the job file (absolute paths, so it can live anywhere).
job_yaml() {
  cat <<EOF
name: $1
model:
  d_model: ${D_MODEL:-256}
  n_layers: ${N_LAYERS:-4}
  n_heads: 4
  seq_len: ${SEQ_LEN:-256}
  vocab_size: 65
  moe: {num_experts: $EXPERTS, top_k: 2, expert_hidden: $(( 2 * ${D_MODEL:-256} ))}
data:
  path: $DATA
  tokenizer: char
train:
  steps: $2
  batch_size: ${BATCH:-$(( 8 * RANKS ))}
  lr: 1.0e-3
  warmup_steps: 20
  precision: $PRECISION
  eval_every: 100
  eval_batches: 5
  log_every: 10
resources: {ranks: $RANKS, device: $DEVICE, launcher: local}
checkpoint: {every: 0}
EOF
}
state_of() { "$BIN/moectl" status "$1" 2>/dev/null | awk '$1 == "state" {print $2}'; }
step_of() { "$BIN/moectl" status "$1" 2>/dev/null | awk '$1 == "step" {split($2, a, "/"); print a[1]}'; }

# 1. A job to the end.
job_yaml service-train "$STEPS" > "$OUT/job.yaml"
if "$BIN/moectl" validate "$OUT/job.yaml" > "$OUT/validate.txt" 2>&1; then
  pass "job.yaml validates ($RANKS ranks, $EXPERTS experts, device $DEVICE, $PRECISION, $STEPS steps)"
else
  cat "$OUT/validate.txt"; fail "job.yaml does not validate"; finish; exit 1
fi
start=$(date +%s)
ID=$("$BIN/moectl" submit "$OUT/job.yaml" 2> "$OUT/submit.err")
if [[ -z $ID ]]; then cat "$OUT/submit.err"; fail "moectl submit"; finish; exit 1; fi
JOBS+=("$ID")
echo "device_service: submitted $ID; following its logs"
# Every rank's lines go to the file; rank 0's to the terminal.
timeout "${JOB_TIMEOUT:-900}" "$BIN/moectl" logs "$ID" -f 2>&1 | tee "$OUT/$ID.log" | grep --line-buffered -v '^\[[1-9]'

STATE=$(state_of "$ID")
if [[ $STATE == SUCCEEDED ]]; then
  pass "$ID SUCCEEDED in $(( $(date +%s) - start )) s"
else
  fail "$ID ended $STATE, not SUCCEEDED: $("$BIN/moectl" status "$ID" | awk '$1 == "reason"' | cut -c11-)"
fi
"$BIN/moectl" status "$ID" | tee "$OUT/$ID.status"
"$BIN/moectl" metrics "$ID" | tee "$OUT/$ID.metrics"
"$BIN/moectl" metrics "$ID" --format json > "$OUT/$ID.metrics.json"
# (The metrics table has a column of each rank's share only when there are several.)
if [[ $(grep -c '^ *rank [0-9]* .*tokens ' "$OUT/$ID.status") == "$RANKS" ]] &&
   { [[ $RANKS == 1 ]] || grep -q 'TOKENS % PER RANK' "$OUT/$ID.metrics"; }; then
  pass "status and metrics show the expert load of each of the $RANKS ranks"
else
  fail "status or metrics lack the per-rank expert load (see $OUT/$ID.status, $OUT/$ID.metrics)"
fi
# Every point reports the largest rank's peak memory and, on GPUs, an MFU per GPU below 1.
"$BIN/moectl" metrics "$ID" --format csv > "$OUT/$ID.metrics.csv"
if awk -F, -v gpu="$([[ $DEVICE == cuda ]] && echo 1)" 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "peak_memory_mb") p = i; if ($i == "mfu") f = i } next }
            { n++; if ($p + 0 > 0) ok++; if (gpu && f && ($f + 0 <= 0 || $f + 0 >= 1)) bad++ }
            END { exit !(p && n > 0 && ok == n && !bad) }' "$OUT/$ID.metrics.csv"; then
  pass "metrics CSV: peak_memory_mb > 0 (and on GPUs 0 < mfu < 1) on every point ($(tail -1 "$OUT/$ID.metrics.csv" | cut -c1-120))"
else
  fail "metrics CSV lacks peak_memory_mb or has an MFU out of (0, 1) (see $OUT/$ID.metrics.csv)"
fi

# 2. A long job, cancelled while it trains.
job_yaml service-cancel "${LONG_STEPS:-100000}" > "$OUT/job-long.yaml"
ID2=$("$BIN/moectl" submit "$OUT/job-long.yaml" 2> "$OUT/submit-long.err")
if [[ -z $ID2 ]]; then cat "$OUT/submit-long.err"; fail "moectl submit (long job)"; finish; exit 1; fi
JOBS+=("$ID2")
first=
second=
for _ in $(seq 300); do
  st=$(state_of "$ID2")
  [[ $st == SUCCEEDED || $st == FAILED || $st == CANCELLED ]] && break
  if [[ $st == RUNNING ]]; then
    s=$(step_of "$ID2")
    if [[ -z $first && ${s:-0} -gt 0 ]]; then first=$s; elif [[ -n $first && ${s:-0} -gt $first ]]; then second=$s; break; fi
  fi
  sleep 1
done
if [[ -n $second ]]; then
  pass "$ID2 RUNNING, step $first -> $second"
else
  fail "$ID2 did not train ($(state_of "$ID2"), step ${first:-none}): $("$BIN/moectl" status "$ID2" | awk '$1 == "reason"' | cut -c11-)"
fi
if [[ $DEVICE == cuda ]]; then
  RUNNING_APPS=$(GPU_APPS | wc -l)
  echo "device_service: GPU processes while $ID2 trains: $RUNNING_APPS"
  (( RUNNING_APPS == 0 )) && echo "device_service: NOTE nvidia-smi lists no process here (container?), so its check after the cancel proves little"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv | tee "$OUT/gpu-apps-running.csv"
fi
"$BIN/moectl" status "$ID2" > "$OUT/$ID2.status-running"
"$BIN/moectl" cancel "$ID2" --wait 120 2>&1 | tee "$OUT/cancel.txt"
STATE2=$(state_of "$ID2")
if [[ $STATE2 == CANCELLED ]]; then pass "$ID2 CANCELLED"; else fail "$ID2 is $STATE2 after moectl cancel"; fi
"$BIN/moectl" logs "$ID2" --tail 5 > "$OUT/$ID2.log" 2>&1
# Live processes of our jobs (their command lines name the state dir), and any live moe-worker or
# mpirun at all (zombies hold nothing and are skipped); a few seconds for the last to exit.
for _ in $(seq 20); do
  LEFT=$(pgrep -f -- "$WORK/state/jobs/" | tr '\n' ' ')
  NAMED=$(ps -eo pid=,stat=,comm= | awk '$2 !~ /^Z/ && $3 ~ /^(moe-worker|mpirun|orted|prted)$/ {print $1}' | tr '\n' ' ')
  [[ -z $LEFT && -z $NAMED ]] && break
  sleep 0.5
done
if [[ -z $LEFT && -z $NAMED ]]; then
  pass "no moe-worker or mpirun process left"
else
  ps -o pid,ppid,sid,etime,cmd -p "$(echo $LEFT $NAMED | tr ' ' ',')" | tee "$OUT/left.txt"
  fail "processes left after the cancel: ${LEFT}${NAMED}"
fi
if [[ $DEVICE == cuda ]]; then
  for _ in $(seq 20); do [[ -z $(GPU_APPS) ]] && break; sleep 0.5; done
  APPS=$(GPU_APPS | tr '\n' ' ')
  if [[ -z $APPS ]]; then pass "nvidia-smi shows no compute process"; else fail "GPU processes left: $APPS"; fi
fi
"$BIN/moectl" list | tee "$OUT/list.txt"
finish
exit $FAILED
