#!/usr/bin/env bash
# Trains on every GPU of one machine.
#
#   bash launch/gpu_single_host.sh CONFIG WORKDIR [--config.<field>=<value> ...]
#
# e.g.
#   bash launch/gpu_single_host.sh configs/coco.py:text=bert workdirs/coco_bert \
#       --config.data.dir=/data/coco_prepared --config.model.bert_path=bert-base-uncased
#
# One process sees all GPUs (pick them with CUDA_VISIBLE_DEVICES=0,1,...); the mesh's data
# axis spans them and config.batch_size (global, in images) is split over them.
# PROCS=N starts N processes instead, one GPU each, joined by jax.distributed through
# DITM_COORDINATOR_ADDRESS=127.0.0.1:$PORT (the multi-host code path, on one host).
#
# Preemption: SIGTERM (kill -TERM, or a scheduler) makes the run save a checkpoint at the
# next step and exit with status 143; running the same command again resumes from it.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.<field>=<value> ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
python=${PYTHON:-python}
procs=${PROCS:-1}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

if [ "$procs" -le 1 ]; then
  exec "$python" -m ditm_jax.main --config="$config" --workdir="$workdir" "$@"
fi

port=${PORT:-$(( 20000 + RANDOM % 20000 ))}
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
for ((i = 0; i < procs; i++)); do
  CUDA_VISIBLE_DEVICES=$i DITM_COORDINATOR_ADDRESS=127.0.0.1:$port DITM_NUM_PROCESSES=$procs \
    DITM_PROCESS_ID=$i "$python" -m ditm_jax.main --config="$config" --workdir="$workdir" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  code=0
  wait "$pid" || code=$?
  if [ "$code" -gt "$status" ]; then status=$code; fi
done
exit "$status"
