"""Step metrics -> metrics.jsonl/TensorBoard/console, at log steps only."""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import ml_collections

from dashclip_jax.train import metric_writer
from dashclip_jax.trainers import nonfinite

log = logging.getLogger("dashclip_jax")


class TrainLogger:
  """Step metrics -> metrics.jsonl/TensorBoard/console at log steps only.

  Device values are fetched only every `train.log_every` steps (and at the
  last one); the NaN/Inf flags of the steps in between are checked then,
  under `train.nan_policy`. With `data` (the train iterator, e.g.
  `inputs.ShardedBatches`), log steps also count its bad images
  (train/examples_seen, train/bad_images, train/bad_image_fraction) and
  log a warning naming the culprits whenever new ones were skipped.
  """

  def __init__(self, writer: metric_writer.MetricWriter,
               train_cfg: ml_collections.ConfigDict, lr_at, start_step: int,
               data: Any = None):
    self.writer, self.cfg, self.lr_at = writer, train_cfg, lr_at
    self._pending_steps, self._pending_flags = [], []
    self._t_last, self._n_last = time.time(), start_step
    self._data, self._bad_reported = data, 0

  def step(self, step: int, metrics: dict[str, jax.Array], last: bool
           ) -> None:
    self._pending_steps.append(step)
    self._pending_flags.append(metrics["nonfinite"])
    if step % self.cfg.log_every and not last:
      return
    skipped = nonfinite.check_nonfinite(self._pending_steps,
                                        self._pending_flags,
                                        self.cfg.nan_policy)
    self._pending_steps, self._pending_flags = [], []
    host = host_metrics(metrics)
    now, done = time.time(), step - self._n_last
    host["train/examples_per_s"] = (done * self.cfg.batch_size /
                                    max(now - self._t_last, 1e-9))
    host["train/step_time_s"] = (now - self._t_last) / max(done, 1)
    host["train/lr"] = float(self.lr_at(step - 1))
    host["train/skipped_steps"] = float(skipped)
    host.update(self._bad_data(step))
    self._t_last, self._n_last = now, step
    self.write(step, host)

  def _bad_data(self, step: int) -> dict[str, float]:
    report = getattr(self._data, "bad_report", None)
    if report is None:
      return {}
    seen, bad, summary = report()
    if bad > self._bad_reported:
      log.warning("train data at step %d: %d bad images of %d examples "
                  "seen; %s", step, bad, seen, summary)
    self._bad_reported = bad
    return {"train/examples_seen": float(seen), "train/bad_images": float(bad),
            "train/bad_image_fraction": bad / max(seen, 1)}

  def write(self, step: int, metrics: dict[str, float]) -> None:
    self.writer.write(step, metrics)
    self.writer.progress(step, metrics)


def host_metrics(metrics: dict[str, jax.Array], prefix: str = "train/"
                 ) -> dict[str, float]:
  return {prefix + k: float(v) for k, v in jax.device_get(metrics).items()}
