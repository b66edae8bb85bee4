#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every worker.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/stage2.py:base /mnt/runs/s2 \
#     --config.init.checkpoint=/mnt/runs/s1
# On TPU VMs jax.distributed.initialize() needs no arguments: --multihost makes
# dashclip_jax.main call it on every worker. The repo must be installed on all
# workers first (SETUP=1 below). The workdir is a POSIX path every worker
# sees (a GCS bucket mounted with gcsfuse, or NFS): workdirs are read and
# written with ordinary file I/O, so gs:// URLs are not accepted.
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; config=${3:?config}; workdir=${4:?workdir}
shift 4
if [[ "${SETUP:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
    "pip install -U 'jax[tpu]' && git clone ${REPO_URL:?} dashclip_jax 2>/dev/null; cd dashclip_jax && git pull && pip install -e ."
fi
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd dashclip_jax && python -m dashclip_jax.main --multihost --config=$config --workdir=$workdir $*"
