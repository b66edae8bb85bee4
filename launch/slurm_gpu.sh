#!/usr/bin/env bash
# Multi-host GPU cluster under SLURM: one process per node, all its GPUs.
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=1 \
#     launch/slurm_gpu.sh configs/stage2.py:base /shared/runs/s2 \
#     --config.init.checkpoint=/shared/runs/s1
# jax.distributed.initialize() reads the coordinator, process count and id
# from SLURM's variables (--multihost; dashclip_jax.main
# also calls it by itself whenever SLURM_NTASKS > 1).
# The workdir must be on storage every node sees; rerunning the same sbatch
# line resumes from the last checkpoint (preemption sends SIGTERM first).
#SBATCH --job-name=dashclip
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
config=${1:?config file[:variant]}; workdir=${2:?workdir}; shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
srun --kill-on-bad-exit=1 python -m dashclip_jax.main --multihost \
  --config="$config" --workdir="$workdir" "$@"
