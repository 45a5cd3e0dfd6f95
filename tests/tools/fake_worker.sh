#!/bin/sh
# A stand-in for moe-worker that follows its launch contract, for the control-plane tests:
#   fake_worker.sh --spec FILE --moed ADDR --job-id ID --attempt N [--attempt-dir DIR]
#                  --checkpoint-dir DIR [--resume]
# Behaviour comes from the environment (mpirun passes it on to every rank):
#   FAKE_STEPS (default 5)      steps to "train", one line per step on stdout
#   FAKE_STEP_SECONDS (0.2)     time per step
#   FAKE_FAIL_RANK / FAKE_FAIL_STEP / FAKE_FAIL_CODE: that rank exits with that code at that step
#   FAKE_FAIL_ATTEMPT (default 0): the failure happens only in this attempt
#   FAKE_IGNORE_TERM=1: SIGTERM is ignored (a rank past its last step, which ends on its own)
#   FAKE_SPILL_FILE: rank 0 copies this file to its metrics spill file in --attempt-dir before
#   it ends, as a reporter does that could not deliver its points
# On SIGTERM it writes a checkpoint file and exits 143; with --resume it continues from the
# step in <checkpoint-dir>/rank-N.ckpt.
rank=${OMPI_COMM_WORLD_RANK:-0}
spec="" job="" attempt=0 attempt_dir="" ckpt="" resume=0
while [ $# -gt 0 ]; do
  case "$1" in
    --spec) spec=$2; shift 2 ;;
    --moed) shift 2 ;;
    --job-id) job=$2; shift 2 ;;
    --attempt) attempt=$2; shift 2 ;;
    --attempt-dir) attempt_dir=$2; shift 2 ;;
    --checkpoint-dir) ckpt=$2; shift 2 ;;
    --resume) resume=1; shift ;;
    *) echo "fake_worker: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -f "$spec" ] || { echo "fake_worker: no spec file '$spec'" >&2; exit 2; }
mkdir -p "$ckpt"
steps=${FAKE_STEPS:-5}
step=0
if [ "$resume" = 1 ] && [ -f "$ckpt/rank-$rank.ckpt" ]; then
  step=$(cat "$ckpt/rank-$rank.ckpt")
  echo "rank $rank resuming from step $step"
fi
echo "rank $rank of job $job attempt $attempt starting"
trap 'echo "$step" > "$ckpt/rank-$rank.ckpt"; echo "rank $rank got SIGTERM, checkpoint at step $step"; exit 143' TERM
if [ "${FAKE_IGNORE_TERM:-0}" = 1 ]; then trap '' TERM; fi
while [ "$step" -lt "$steps" ]; do
  step=$((step + 1))
  if [ "$rank" = "${FAKE_FAIL_RANK:--1}" ] && [ "$step" = "${FAKE_FAIL_STEP:-0}" ] &&
     [ "$attempt" = "${FAKE_FAIL_ATTEMPT:-0}" ]; then
    echo "rank $rank failing on purpose at step $step" >&2
    exit "${FAKE_FAIL_CODE:-3}"
  fi
  echo "{\"rank\": $rank, \"step\": $step, \"loss\": 1.0}"
  echo "$step" > "$ckpt/rank-$rank.ckpt"
  sleep "${FAKE_STEP_SECONDS:-0.2}" &
  wait $!
done
echo "rank $rank done after $step steps"
if [ "$rank" = 0 ] && [ -n "${FAKE_SPILL_FILE:-}" ] && [ -n "$attempt_dir" ]; then
  cp "$FAKE_SPILL_FILE" "$attempt_dir/unsent-metrics.rank0.pb"
fi
