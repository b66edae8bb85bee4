"""Where a model directory came from: the training run's config and the
evaluation of this model, found from any of the run's model directories.

A model dir is `<run>/models/<step>`; its metadata's provenance names the
run's workdir too. A main job (`dashclip_jax.main`) writes its
`config.json` at its top and trains stage 1 and 2 in `<job>/stage1` and
`<job>/stage2`, so for those the config is one level up. The evaluation is
`metrics.json` in `<run>/eval` or, for a main job's stage 2, `<job>/eval`,
taken only when the `report.md` beside it names this model as its
checkpoint. Used by the model card (`export_hf.card`) and the embeddings
server's /v1/models; light to import (no torch).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from dashclip_jax.model import model_dir as model_dir_lib

CONFIG_FILE = "config.json"
_MAIN_JOB_STAGES = ("stage1", "stage2")


def run_workdir(model_dir: str, meta: dict[str, Any]) -> str | None:
  """The directory holding the training config of a model dir's run (the
  run's workdir, or the main job's above its stage), if it is on disk."""
  runs = [meta.get("provenance", {}).get("workdir")]
  parent = os.path.dirname(os.path.abspath(model_dir))
  if os.path.basename(parent) == "models":
    runs.append(os.path.dirname(parent))
  candidates = []
  for run in filter(None, runs):
    candidates.append(run)
    if os.path.basename(os.path.normpath(run)) in _MAIN_JOB_STAGES:
      candidates.append(os.path.dirname(os.path.normpath(run)))
  for path in candidates:
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
      return path
  return None


def training_config(workdir: str | None) -> dict[str, Any] | None:
  if workdir is None:
    return None
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    return json.load(f)


def _same_model(checkpoint: str, model_dir: str) -> bool:
  try:
    checkpoint = model_dir_lib.resolve_model_dir(checkpoint)
  except FileNotFoundError:
    pass
  return os.path.realpath(checkpoint) == os.path.realpath(model_dir)


def evaluation(workdir: str | None, model_dir: str
               ) -> tuple[str, dict[str, dict]] | None:
  """(metrics.json path, {system: {metric: value}}) of this model, if any."""
  if workdir is None:
    return None
  for eval_dir in (os.path.join(workdir, "eval"),
                   os.path.join(os.path.dirname(workdir), "eval")):
    metrics, report = (os.path.join(eval_dir, f)
                       for f in ("metrics.json", "report.md"))
    if not (os.path.isfile(metrics) and os.path.isfile(report)):
      continue
    with open(report) as f:
      named = re.search(r"^- Checkpoint: `([^`]*)`", f.read(), re.M)
    if named and _same_model(named.group(1), model_dir):
      with open(metrics) as f:
        return metrics, json.load(f)
  return None
