#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every worker.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/stage2.py:base gs://bucket/runs/s2 \
#     --config.init.checkpoint=gs://bucket/runs/s1
# On TPU VMs jax.distributed.initialize() needs no arguments: dashclip_jax.main
# calls it when TPU_WORKER_HOSTNAMES is set. The repo must be installed on all
# workers first (the `setup` step below); the workdir should be a GCS path.
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; config=${3:?config}; workdir=${4:?workdir}
shift 4
if [[ "${SETUP:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
    "pip install -U 'jax[tpu]' && git clone ${REPO_URL:?} dashclip_jax 2>/dev/null; cd dashclip_jax && git pull && pip install -e ."
fi
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd dashclip_jax && python -m dashclip_jax.main --config=$config --workdir=$workdir $*"
