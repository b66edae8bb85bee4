"""Training checkpoints: Orbax CheckpointManager around the train state.

One checkpoint = `<workdir>/checkpoints/<step>/` with three items:
  state  the TrainState pytree (params, optimizer, step, momentum, queues),
         restored straight into the shardings of a target state
  data   the data iterator's state (JSON), so a resume continues mid-epoch:
         one item of every process's shards, so that a resume may run them
         on another number of processes (grain's Orbax handler writes one
         file per process index and count)
  meta   step, rng seed, eval metrics and the run's flattened config (to
         name what changed on a resume)
and, with a `best_metric`, Orbax's own `metrics` item (that metric alone).

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a save interrupted midway (kill -9, preemption) never touches
the last good one. A checkpoint that is nevertheless unreadable (disk
damage, a partial copy) is moved aside to `<step>.damaged` with a warning
and the previous one used, so the run can save that step again. One whose
saved arrays do not fit the target state (a config change such as
`loss.queue_size`) is not damage: `StateMismatchError` names the config
keys that changed. Kept: the last `keep` checkpoints plus the best by the
eval metric (Orbax's preservation policies, which read the `metrics` items
back when the checkpoints are reopened).

A full disk ends a save in one `DiskFullError` line naming the checkpoint
directory, the free space there and about how much a checkpoint needs (not
hundreds of lines of Orbax tracebacks from its writer threads). The partial
`<step>.orbax-checkpoint-tmp*` directory such a failure (or a kill -9
mid-save) leaves is removed when the next run opens the directory; only one
job writes a workdir at a time (workdir_lock.py), so none is in use.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from etils import epath
from jax.experimental import multihost_utils

from dashclip_jax.train import checkpoint_failures as failures

log = logging.getLogger("dashclip_jax.train.checkpoints")

# What a training run writes into its workdir (set aside on a restart).
RUN_OUTPUTS = ("checkpoints", "models", "metrics.jsonl", "tensorboard")


# Orbax's temporary names: `<step>.orbax-checkpoint-tmp[-<time>]`.
TMP_PATTERN = "*.orbax-checkpoint-tmp*"


class StateMismatchError(ValueError):
  """A checkpoint whose arrays do not fit the target state (not damage)."""


class DiskFullError(RuntimeError):
  """A save that ran out of disk; the message names where and how much."""


def flatten_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
  """Nested dicts/ConfigDicts -> {"a.b": JSON value}; flat dicts pass."""
  out: dict[str, Any] = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, Mapping):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(dict(config or {}), "")
  # JSON round trip: the form it takes in (and back from) the meta item.
  return json.loads(json.dumps(out, default=str))


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
  """"key old -> new, ..." over the keys whose values differ ("" if none)."""
  missing = "(unset)"
  keys = sorted(k for k in set(old) | set(new)
                if old.get(k, missing) != new.get(k, missing))
  return ", ".join(f"{k} {old.get(k, missing)} -> {new.get(k, missing)}"
                   for k in keys)


def _primary_then_sync(fn, name: str):
  """Runs `fn` on process 0 only; every process returns once it is done."""
  out = fn() if jax.process_index() == 0 else None
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
  return out


def _unused_name(path: str) -> str:
  candidate, n = path, 1
  while os.path.exists(candidate):
    candidate, n = f"{path}.{n}", n + 1
  return candidate


def set_aside_run(workdir: str) -> str | None:
  """Moves a previous run's outputs (RUN_OUTPUTS) into a new
  `<workdir>/before_restart_<time>/`; -> that directory, None if none."""
  workdir = os.path.abspath(workdir)
  present = [n for n in RUN_OUTPUTS
             if os.path.exists(os.path.join(workdir, n))]
  if not present:
    return None
  dest = _unused_name(os.path.join(
      workdir, time.strftime("before_restart_%Y%m%d_%H%M%S")))

  def move():
    os.makedirs(dest)
    for name in present:
      os.replace(os.path.join(workdir, name), os.path.join(dest, name))
  _primary_then_sync(move, f"set aside {workdir}")
  return dest


class TrainCheckpoints:
  """Save/restore/retention of training checkpoints in a workdir."""

  def __init__(self, workdir: str, *, keep: int = 2,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True,
               config: Mapping[str, Any] | None = None):
    """`config` (nested or flat) is saved with every checkpoint, so that a
    resume can name the values that changed since."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._clear_partial_saves()
    # Idempotent.
    logging.getLogger("absl").addFilter(failures.DISK_FULL_FILTER)
    self._state_bytes = 0
    self.config = None if config is None else flatten_config(config)
    self.keep = keep
    self.best_metric = best_metric
    self.best_mode = best_mode
    kept = [policies.LatestN(keep)]
    best = {}
    if best_metric:
      best = dict(best_fn=self._rank, best_mode=best_mode)
      kept.append(policies.BestN(
          get_metric_fn=self._rank, reverse=best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(kept),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, create=True, **best))

  def _clear_partial_saves(self) -> None:
    """Removes the temporary directories of saves that never completed."""
    partial = sorted(glob.glob(os.path.join(self.directory, TMP_PATTERN)))
    if not partial:
      return
    log.info("removing %d partial checkpoint(s) an interrupted save left: "
             "%s", len(partial), ", ".join(map(os.path.basename, partial)))
    _primary_then_sync(
        lambda: [shutil.rmtree(p, ignore_errors=True) for p in partial],
        f"clear partial saves in {self.directory}")

  def _disk_full(self) -> DiskFullError:
    """The one-line error of a save that ran out of disk."""
    done = [s for s in self.steps()
            if os.path.isdir(os.path.join(self.directory, str(s)))]
    need = (failures.dir_size(os.path.join(self.directory, str(done[-1])))
            if done else self._state_bytes)
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      free = 0
    kept = f"; step {done[-1]} is the last good one" if done else ""
    return DiskFullError(
        f"the disk is full: saving a checkpoint in {self.directory} failed "
        f"with {failures.mb(free)} free there, and a checkpoint takes about "
        f"{failures.mb(need)} (free at least that, or use another "
        f"--workdir; the partial save is removed on the next start{kept})")

  def _through_orbax_calls(self, fn, *args, **kwargs):
    """fn(...), a full disk raised as DiskFullError."""
    try:
      return fn(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      if failures.is_disk_full(e):
        raise self._disk_full() from None
      raise

  def _rank(self, metrics: Mapping[str, Any]) -> float:
    """Orbax's best_fn: the metric, or the worst value for a step without
    it (e.g. between evals: see save)."""
    value = metrics.get(self.best_metric)
    if value is None or math.isnan(value):
      return -math.inf if self.best_mode == "max" else math.inf
    return float(value)

  # -- queries -------------------------------------------------------------

  def steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  # -- save ----------------------------------------------------------------

  def save(self, step: int, state: Any, data_state: dict | None,
           meta: dict[str, Any] | None = None, *, wait: bool = False) -> None:
    """`meta[best_metric]`, where present, ranks the step for `best`."""
    meta = dict(meta or {}, step=int(step))
    if self.config is not None:
      meta["config"] = self.config
    # Every step gets metrics, empty between evals (ranked worst): Orbax
    # warns on each save without any.
    metrics = None
    if self.best_metric:
      value = meta.get(self.best_metric)
      metrics = {} if value is None else {self.best_metric: float(value)}
    self._state_bytes = sum(getattr(x, "nbytes", 0)
                            for x in jax.tree.leaves(state))
    self._through_orbax_calls(
        self._mngr.save, step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)
    if wait:
      self.wait()

  def wait(self) -> None:
    """Until the async save is written (DiskFullError if the disk filled)."""
    self._through_orbax_calls(self._mngr.wait_until_finished)

  def best(self) -> dict[str, Any] | None:
    """{step, value, metric} of the best kept step by `best_metric`; None
    without one, or when no kept step has it."""
    step = self._mngr.best_step() if self.best_metric else None
    if step is None:
      return None
    value = (self._mngr.metrics(step) or {}).get(self.best_metric)
    if value is None or math.isnan(value):
      return None
    return dict(step=int(step), value=float(value), metric=self.best_metric)

  # -- restore -------------------------------------------------------------

  def restore(self, target_state: Any, step: int | None = None
              ) -> tuple[Any, dict, dict] | None:
    """-> (state, data_state, meta) of the newest readable checkpoint.

    `target_state` (concrete or ShapeDtypeStructs with shardings) fixes the
    restored layout. A newest checkpoint that cannot be read is moved aside
    (`<step>.damaged`) with a warning and the previous one tried; one whose
    arrays do not fit `target_state` raises StateMismatchError naming the
    config changes. None when there is no (readable) checkpoint.
    """
    candidates = [step] if step is not None else self.steps()[::-1]
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    damaged = []
    try:
      for s in candidates:
        saved = self._saved_shapes(s)
        mismatch = saved and failures.shape_mismatch(
            saved, failures.shapes(abstract))
        if mismatch:
          raise StateMismatchError(self._mismatch_message(s, mismatch))
        hook = failures.quiet_aborted_reads()
        try:
          out = self._mngr.restore(s, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        except Exception as e:  # pylint: disable=broad-except
          # Shapes fit (or are unreadable), so this is damage, not config.
          log.warning("checkpoint %s/%d is unreadable (%s: %s); trying the "
                      "previous one", self.directory, s, type(e).__name__,
                      failures.first_line(e))
          damaged.append(s)
          continue
        if not damaged:  # No read was aborted: nothing to quiet.
          sys.unraisablehook = hook
          logging.getLogger("asyncio").removeFilter(failures.ASYNCIO_FILTER)
        meta = dict(out["meta"] or {})
        self._log_config_changes(s, meta.get("config"))
        return out["state"], dict(out["data"] or {}), meta
      return None
    finally:
      # Only now, after the fallback: a failed restore's reads may still
      # be in flight, and moving their files under them makes more noise.
      for s in damaged:
        log.warning("moved the unreadable checkpoint %s/%d to %s, so that "
                    "step %d can be saved again", self.directory, s,
                    self._set_aside_damaged(s), s)

  def _saved_shapes(self, step: int) -> dict[str, tuple] | None:
    """The array shapes a checkpoint holds; None when unreadable."""
    path = epath.Path(self.directory) / str(step) / "state"
    try:
      # A handler of its own: given to the manager (item_handlers), one
      # breaks the manager's later saves once a restore has failed.
      meta = ocp.StandardCheckpointHandler().metadata(path)
      return failures.shapes(getattr(meta, "tree", meta)) or None
    except Exception:  # pylint: disable=broad-except
      return None  # Damaged metadata: the restore below says more.

  def _saved_config(self, step: int) -> dict[str, Any] | None:
    try:
      meta = self._mngr.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # pylint: disable=broad-except
      return None
    return (meta or {}).get("config")

  def _mismatch_message(self, step: int, mismatch: str) -> str:
    saved = self._saved_config(step)
    if saved is None:
      changed = ("it was written without its config (an older version), so "
                 "the changed keys are unknown")
    elif self.config is None:
      changed = "no config given to compare with"
    else:
      diff = config_changes(saved, self.config)
      changed = f"changed: {diff}" if diff else "no config value changed"
    return (f"checkpoint {self.directory}/{step} does not fit this config's "
            f"train state ({mismatch}); {changed}")

  def _log_config_changes(self, step: int, saved: dict | None) -> None:
    if self.config is None:
      return
    if saved is None:
      log.info("checkpoint %s/%d has no saved config (an older version): "
               "config changes since are not listed", self.directory, step)
    elif diff := config_changes(saved, self.config):
      log.info("resuming step %d with changed config values: %s", step, diff)

  def _set_aside_damaged(self, step: int) -> str:
    """Renames an unreadable step to `<step>.damaged`, which Orbax ignores,
    so that training can save that step again."""
    src = os.path.join(self.directory, str(step))
    dest = _unused_name(src + ".damaged")
    self._mngr.wait_until_finished()
    _primary_then_sync(lambda: os.replace(src, dest),
                       f"set aside {src}")
    self._mngr.reload()
    return dest

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._mngr.close()
