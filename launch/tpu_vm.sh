#!/usr/bin/env bash
# Trains on a Cloud TPU VM or pod slice: the same command runs on every worker, and
# jax.distributed finds the workers itself (DITM_DISTRIBUTED=auto).
#
#   TPU=my-tpu ZONE=us-central2-b bash launch/tpu_vm.sh CONFIG WORKDIR [--config.<field>=<value> ...]
#
# which runs
#   gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd $REPO && \
#     DITM_DISTRIBUTED=auto python -m ditm_jax.main --config=CONFIG --workdir=WORKDIR ..."
#
# e.g.
#   TPU=ditm-v4-32 ZONE=us-central2-b bash launch/tpu_vm.sh configs/coco.py:text=bert \
#       gs://my-bucket/workdirs/coco_bert --config.data.dir=gs://my-bucket/coco_prepared \
#       --config.model.bert_path=bert-base-uncased
#
# WORKDIR (and the prepared data) should be gs:// paths, which every worker reads and writes.
# REPO (default ~/ditm_jax) is where the repository is checked out on every worker, set up
# once with, e.g.
#   gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="git clone \
#     <repo-url> ~/ditm_jax && pip install -r ~/ditm_jax/requirements.txt 'jax[tpu]'"
# PYTHON picks the interpreter on the workers.
#
# Preemption: a maintenance event or a spot reclaim sends SIGTERM; the run saves a checkpoint
# at the next step and exits with status 143. Run this script again (after the TPU is back)
# to resume from the latest checkpoint in WORKDIR.
set -euo pipefail
if [ $# -lt 2 ] || [ -z "${TPU:-}" ] || [ -z "${ZONE:-}" ]; then
  echo "usage: TPU=<name> ZONE=<zone> $0 CONFIG WORKDIR [--config.<field>=<value> ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
repo=${REPO:-'~/ditm_jax'}
python=${PYTHON:-python3}
args=$(printf ' %q' --config="$config" --workdir="$workdir" "$@")
command="cd $repo && TF_CPP_MIN_LOG_LEVEL=2 DITM_DISTRIBUTED=auto $python -m ditm_jax.main$args"
echo "on every worker of $TPU: $command" >&2
exec gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$command"
