#!/usr/bin/env bash
# One machine, all its devices (CPU cores, GPUs or a single TPU VM host).
#   launch/local.sh configs/stage2.py:demo /tmp/dashclip [--config.x=y ...]
set -euo pipefail
config=${1:?config file[:variant]}; workdir=${2:?workdir}; shift 2
exec python -m dashclip_jax.main --config="$config" --workdir="$workdir" "$@"
