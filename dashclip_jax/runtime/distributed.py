"""Multi-process runs: the flags every job takes and jax.distributed."""

from __future__ import annotations

import logging
import os

from absl import flags
import jax


class DistributedFlags:
  """The multi-process flags every entry point takes; `initialize()` runs
  `init_distributed` with their values."""

  def __init__(self):
    self.coordinator_address = flags.DEFINE_string(
        "coordinator_address", None,
        "host:port of process 0 for jax.distributed (multi-process runs); "
        "unset: auto-detected on SLURM/TPU pods, else single process.")
    self.num_processes = flags.DEFINE_integer(
        "num_processes", None, "Processes in a multi-process run.")
    self.process_id = flags.DEFINE_integer("process_id", None,
                                           "This process's id.")
    self.multihost = flags.DEFINE_bool(
        "multihost", False,
        "Call jax.distributed.initialize() with the platform's "
        "auto-detection (Cloud TPU pods, SLURM, ...); launch/tpu_pod.sh and "
        "slurm_gpu.sh set it.")

  def several_processes(self) -> bool:
    """Whether `initialize()` starts jax.distributed (init_distributed's
    rule), known before JAX starts a backend."""
    return bool(self.coordinator_address.value or self.multihost.value or
                int(os.environ.get("SLURM_NTASKS", "1")) > 1)

  def initialize(self) -> None:
    init_distributed(self.coordinator_address.value, self.num_processes.value,
                     self.process_id.value, self.multihost.value)


def init_distributed(coordinator_address: str | None,
                     num_processes: int | None, process_id: int | None,
                     multihost: bool) -> None:
  """jax.distributed.initialize where the run has several processes.

  Explicit (`coordinator_address`, e.g. localhost runs), platform
  auto-detection (`multihost`), or SLURM with more than one task.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif multihost or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  if jax.process_count() > 1:
    logging.getLogger("dashclip_jax").info(
        "process %d of %d; %d local / %d global devices", jax.process_index(),
        jax.process_count(), jax.local_device_count(), jax.device_count())
