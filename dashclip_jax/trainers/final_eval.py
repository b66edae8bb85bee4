"""The main job's last step: the evaluation suite on the trained model."""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from dashclip_jax.evaluation import run as eval_run

log = logging.getLogger("dashclip_jax")


def run(config: ml_collections.ConfigDict, model_dir: str, workdir: str,
        init_model_dir: str | None) -> dict[str, dict] | None:
  """Evaluates `model_dir` with `config.final_eval` (a configs/eval.py config).

  `init_model_dir` is the untrained start of the run, the "init" system; it
  is dropped from the baselines when there is none. Runs on process 0 only
  (the evaluation encodes on its local devices); returns its metrics there.
  """
  if jax.process_index() != 0:
    return None
  cfg = config.final_eval.copy_and_resolve_references()
  with cfg.unlocked():
    del cfg["enabled"]
    cfg.checkpoint = model_dir
    cfg.init_checkpoint = init_model_dir or ""
    if not init_model_dir:
      cfg.baselines = tuple(b for b in cfg.baselines if b != "init")
  os.makedirs(workdir, exist_ok=True)
  results = eval_run.evaluate(cfg, workdir)
  log.info("evaluation report: %s", os.path.join(workdir, "report.md"))
  return results
