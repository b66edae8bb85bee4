"""Eval embeddings: a jitted fn over this process's batches -> host rows."""

from __future__ import annotations

import jax
import numpy as np

from dashclip_jax.train import sharding as shard_lib


def embed_all(fn, params, batches: list[dict[str, np.ndarray]], mesh
              ) -> tuple[np.ndarray, ...]:
  """Runs a jitted eval fn over this process's eval batches.

  `fn(params, global batch)` returns replicated arrays, the last one the
  rows' valid flags; the others come back as host arrays of the valid rows
  of every batch, concatenated.
  """
  parts = []
  for local in batches:
    *outs, valid = jax.device_get(fn(params, shard_lib.global_batch(local,
                                                                    mesh)))
    keep = valid.astype(bool)
    parts.append([x[keep] for x in outs])
  return tuple(np.concatenate(column) for column in zip(*parts))
