"""Metrics out of a training run: JSON lines, TensorBoard and the console.

Only process 0 writes. Values arrive as host floats: the trainer fetches
them from the device at log steps only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax

log = logging.getLogger("dashclip_jax")


class MetricWriter:
  """Appends `{"step": s, **metrics}` to metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str, total_steps: int, tensorboard: bool = True):
    self.total_steps = total_steps
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._start_time = None
    self._start_step = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    if tensorboard:
      try:
        # Only when events are asked for: a heavy import (protobuf, seconds).
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        log.warning("tensorboardX not installed: no TensorBoard events")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if math.isfinite(v):
          # TensorBoard tags allow [A-Za-z0-9_./-]: "eval/r@1" -> "eval/r_at_1".
          self._tb.add_scalar(k.replace("@", "_at_"), v, step)
      self._tb.flush()

  def progress(self, step: int, metrics: dict[str, float]) -> None:
    """One console line with the main numbers and an ETA."""
    now = time.time()
    if self._start_time is None:
      self._start_time, self._start_step = now, step
    done = step - self._start_step
    eta = ""
    if done > 0:
      secs = (now - self._start_time) / done * (self.total_steps - step)
      eta = f" eta {int(secs // 60)}m{int(secs % 60):02d}s"
    shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in metrics.items()
                     if k.startswith(("train/loss", "eval/")) or k in (
                         "train/lr", "train/examples_per_s"))
    log.info("step %d/%d %s%s", step, self.total_steps, shown, eta)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
