#!/usr/bin/env bash
# N processes on this machine talking through jax.distributed over localhost
# (each with its own CPU devices): the multi-host code path without a cluster.
#   launch/localhost_multiprocess.sh 2 configs/stage1.py:tiny /tmp/mp
set -euo pipefail
n=${1:?processes}; config=${2:?config}; workdir=${3:?workdir}; shift 3
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  python -m dashclip_jax.main --config="$config" --workdir="$workdir" \
    --coordinator_address="localhost:$port" --num_processes="$n" \
    --process_id="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
