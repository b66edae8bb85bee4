"""Training checkpoints: Orbax CheckpointManager around the train state.

One checkpoint = `<workdir>/checkpoints/<step>/` with three items:
  state  the TrainState pytree (params, optimizer, step, momentum, queues),
         restored straight into the shardings of a target state
  data   the data iterator's state (JSON), so a resume continues mid-epoch
  meta   step, rng seed and the eval metric that picks the best checkpoint

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a save interrupted midway (kill -9, preemption) never touches
the last good one. A checkpoint that is nevertheless unreadable (disk
damage, a partial copy) is skipped with a warning and the previous one used.
Kept: the last `keep` checkpoints plus the best by the eval metric.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("dashclip_jax.checkpointing")


class TrainCheckpoints:
  """Save/restore/retention of training checkpoints in a workdir."""

  def __init__(self, workdir: str, *, keep: int = 2,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.keep = keep
    self.best_metric = best_metric
    self.best_mode = best_mode
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None,  # Retention below: last K + best.
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, create=True))

  # -- queries -------------------------------------------------------------

  def steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  # -- save ----------------------------------------------------------------

  def save(self, step: int, state: Any, data_state: dict | None,
           meta: dict[str, Any] | None = None, *, wait: bool = False) -> None:
    meta = dict(meta or {}, step=int(step))
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {}),
        meta=ocp.args.JsonSave(meta)), force=True)
    if wait:
      self.wait()
    self._apply_retention(step, meta)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def _best_file(self) -> str:
    return os.path.join(self.directory, "best.json")

  def best(self) -> dict[str, Any] | None:
    if not os.path.isfile(self._best_file()):
      return None
    with open(self._best_file()) as f:
      return json.load(f)

  def _apply_retention(self, step: int, meta: dict[str, Any]) -> None:
    best = self.best()
    value = meta.get(self.best_metric) if self.best_metric else None
    if value is not None:
      better = best is None or (value > best["value"] if self.best_mode ==
                                "max" else value < best["value"])
      if better:
        best = dict(step=int(step), value=float(value),
                    metric=self.best_metric)
        if jax.process_index() == 0:
          os.makedirs(self.directory, exist_ok=True)
          tmp = self._best_file() + ".tmp"
          with open(tmp, "w") as f:
            json.dump(best, f)
          os.replace(tmp, self._best_file())
    keep = set(self.steps()[-self.keep:]) | {step}
    if best is not None:
      keep.add(best["step"])
    for old in self.steps():
      if old not in keep:
        self._mngr.wait_until_finished()
        self._mngr.delete(old)

  # -- restore -------------------------------------------------------------

  def restore(self, target_state: Any, step: int | None = None
              ) -> tuple[Any, dict, dict] | None:
    """-> (state, data_state, meta) of the newest readable checkpoint.

    `target_state` (concrete or ShapeDtypeStructs with shardings) fixes the
    restored layout. Falls back to older checkpoints with a warning when the
    newest cannot be read. None when there is no checkpoint.
    """
    candidates = [step] if step is not None else self.steps()[::-1]
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    for s in candidates:
      try:
        out = self._mngr.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        log.warning("checkpoint %s/%d is unreadable (%s: %s); trying the "
                    "previous one", self.directory, s, type(e).__name__,
                    str(e).splitlines()[0][:200])
        continue
      return out["state"], dict(out["data"] or {}), dict(out["meta"] or {})
    return None

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
