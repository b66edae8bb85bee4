"""A run's checkpoints: open them, resume from the newest, check the metric
that ranks them, and the data iterator state they save (gathered from every
process)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from dashclip_jax.runtime import config_files
from dashclip_jax.train import checkpoints

log = logging.getLogger("dashclip_jax")


def open_checkpoints(config: ml_collections.ConfigDict, workdir: str
                     ) -> checkpoints.TrainCheckpoints:
  """The workdir's checkpoints; with `checkpoint.restart` the previous run's
  outputs are first moved aside (kept, and named in the log)."""
  c = config.checkpoint
  if c.restart:
    moved = checkpoints.set_aside_run(workdir)
    if moved:
      log.warning("checkpoint.restart=True: starting over; the previous "
                  "run's outputs are moved to %s", moved)
  # Saved with each checkpoint, so a resume can say what changed; the
  # restart switches themselves are not part of a run.
  saved = {k: v for k, v in checkpoints.flatten_config(
      config.to_dict()).items() if not k.endswith("checkpoint.restart")}
  return checkpoints.TrainCheckpoints(
      workdir, keep=c.keep, best_metric=c.best_metric or None,
      async_save=c.async_save, config=saved)


def check_best_metric(best_metric: str, eval_metrics: dict[str, float]
                      ) -> None:
  """`checkpoint.best_metric` must be one the evaluation logs: else no step
  would ever rank as the best."""
  if best_metric and eval_metrics and best_metric not in eval_metrics:
    raise config_files.ConfigError(
        f"checkpoint.best_metric={best_metric!r} is not an eval metric of "
        f"this stage; it logs {sorted(eval_metrics)}")


def restore(ckpts: checkpoints.TrainCheckpoints, state, train_iter):
  """Resume from the workdir's newest readable checkpoint, if any.

  Returns (state, resumed?): the state and the data iterator continue where
  the checkpoint left them; otherwise both stay as given.
  """
  workdir = os.path.dirname(ckpts.directory)
  # A stage-2 main job runs its stage 1 in <workdir>/stage1.
  nested = os.path.basename(workdir) == "stage1" and os.path.isfile(
      os.path.join(os.path.dirname(workdir), "config.json"))
  restart = ("to start over, rerun with --config."
             f"{'stage1.' if nested else ''}checkpoint.restart=True (the old "
             "run is moved aside)")
  try:
    restored = ckpts.restore(state)
  except checkpoints.StateMismatchError as e:
    raise config_files.ConfigError(f"{e}. Rerun with the old values to resume, "
                                   f"or {restart}") from None
  if restored is None:
    return state, False
  state, data_state, meta = restored
  try:
    train_iter.set_state(data_state)
  except ValueError as e:  # E.g. data.num_shards changed.
    raise config_files.ConfigError(f"{ckpts.directory}/{meta['step']}: {e}; or "
                                   f"{restart}") from None
  log.info("resumed from %s at step %d", ckpts.directory, meta["step"])
  return state, True


def global_data_state(local_state: dict[str, Any]) -> dict[str, Any]:
  """Every process's data iterator state in one JSON-able dict.

  Orbax writes JSON items from the primary process only, so each process's
  shard states are gathered first (`inputs.ShardedBatches` keys them by
  shard, and each process picks its own on restore).
  """
  if jax.process_count() == 1:
    return local_state
  raw = np.frombuffer(json.dumps(local_state).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray(len(raw), np.int32))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:len(raw)] = raw
  every = multihost_utils.process_allgather(padded)
  merged: dict[str, Any] = {"shards": {}}
  for row, size in zip(every, sizes):
    merged["shards"].update(json.loads(bytes(row[:int(size)]))["shards"])
  return merged
