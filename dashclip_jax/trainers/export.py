"""A trained model out of a run: `<workdir>/models/<step>`."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from dashclip_jax import model as model_lib
from dashclip_jax.model import model_dir as model_dir_lib


def export_model(workdir: str, step: int, params,
                 model_config: model_lib.ModelConfig,
                 provenance: dict[str, Any]) -> str:
  """Writes `<workdir>/models/<step>`: what `dashclip_jax.load` reads.

  Every process must call it (the gather is collective); process 0 writes,
  and all return once the directory is complete.
  """
  out = os.path.join(workdir, "models", str(step))
  done = os.path.exists(os.path.join(out, model_dir_lib.METADATA_FILE))
  if not done:
    host = host_params(params)
    if jax.process_index() == 0:
      model_dir_lib.save_model_dir(out, host, model_config,
                                   provenance=provenance)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"export {out}")
  return out


def host_params(params):
  """Params as host numpy on every process (gathers FSDP/tensor shards)."""
  if all(x.is_fully_addressable or x.is_fully_replicated
         for x in jax.tree.leaves(params)):
    return jax.tree.map(np.asarray, jax.device_get(params))
  return jax.tree.map(np.asarray,
                      multihost_utils.process_allgather(params, tiled=True))
