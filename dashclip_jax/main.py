r"""The main job: stage 1, stage 2 and the final evaluation.

  python -m dashclip_jax.main --config=configs/stage2.py:demo --workdir=/tmp/dc
  python -m dashclip_jax.main --config=configs/stage1.py:base \
      --config.init.checkpoint=ckpt/blip14m --workdir=/tmp/s1 \
      --config.train.batch_size=256

A stage-2 config either names its init checkpoint (`init.checkpoint`: a
stage-1 workdir, an exported model or a converted BLIP checkpoint) or carries
a `stage1` block: then stage 1 runs first in `<workdir>/stage1` (resuming or
reusing what is there), stage 2 in `<workdir>/stage2`, and the evaluation in
`<workdir>/eval`. Rerunning the same command resumes wherever it stopped.
An eval config (configs/eval.py) runs the evaluation job, as
`python -m dashclip_jax.evaluation.run` does.

Config, flag, data and path errors end in one line, `dashclip_jax.main:
error: <message>`, never a traceback.
"""

from __future__ import annotations

import sys

from dashclip_jax.runtime import config_files
from dashclip_jax.runtime import flag_errors
from dashclip_jax.runtime import host_memory

PROG = "dashclip_jax.main"

if __name__ == "__main__":
  # glibc keeps XLA's freed CPU temporaries for the next step. Before the
  # imports below: numpy and jax start threads, which would keep malloc
  # arenas of their own.
  host_memory.reuse_freed_memory_unless_disabled()
  # A bad --config or override fails here, not after seconds of imports.
  flag_errors.exit_on_bad_config(PROG, sys.argv,
                                 config_files.stage1_override_error)

# pylint: disable=g-import-not-at-top,wrong-import-position
import contextlib
import json
import logging
import os
import time

import ml_collections

from dashclip_jax import app
from dashclip_jax.data import bad_records
from dashclip_jax.data import tables
from dashclip_jax.evaluation import pipeline as eval_pipeline
from dashclip_jax.runtime.config_files import ConfigError
from dashclip_jax.train import checkpoints
from dashclip_jax.trainers import final_eval
from dashclip_jax.trainers import init_checkpoint
from dashclip_jax.trainers import nonfinite
from dashclip_jax.trainers import preemption
from dashclip_jax.trainers import stage1
from dashclip_jax.trainers import stage2
# pylint: enable=g-import-not-at-top,wrong-import-position

log = logging.getLogger("dashclip_jax")


def stage1_config_of(config):
  """The nested stage-1 config of a stage-2 config, on the same data.

  The `stage1` block supplies train/optim/loss/checkpoint/eval; data, model,
  mesh and seed are the stage-2 config's, so one override moves both stages.
  So does `init.text_from`: it initialises whichever stage starts the run.
  A `stage1` block that sets data, model, mesh or seed itself is an error:
  they would be ignored.
  """
  own = [k for k in config_files.STAGE1_FROM_STAGE2 if k in config.stage1]
  if own:
    raise ConfigError(
        f"config.stage1.{own[0]}: {config_files.STAGE1_SHARES}; set "
        f"config.{own[0]} instead (it moves both stages) and drop stage1's "
        "copy")
  s1 = config.stage1.copy_and_resolve_references()
  with s1.unlocked():
    for key in config_files.STAGE1_FROM_STAGE2:
      s1[key] = config[key]
    if config.init.text_from:
      s1.init.text_from = config.init.text_from
  return s1


@contextlib.contextmanager
def timed_phase(name: str):
  """Logs a phase's wall and CPU time (all threads of this process) when it
  ends: the main job's cost per stage, read from its own log."""
  wall, cpu = time.monotonic(), time.process_time()
  yield
  log.info("=== %s took %s (CPU %.0f s) ===", name,
           _minutes(time.monotonic() - wall), time.process_time() - cpu)


def _minutes(seconds: float) -> str:
  return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def start_model_of(stage_config, stage_dir: str) -> str | None:
  """The untrained start of a stage: its init checkpoint or models/0."""
  if stage_config.init.checkpoint:
    return stage_config.init.checkpoint
  start = os.path.join(stage_dir, "models", "0")
  return start if os.path.isdir(start) else None


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs what the config asks for; returns {"model": dir, "metrics": ...}.

  An eval config (configs/eval.py) runs evaluation.run's job in `workdir`.
  """
  stage = config.get("stage")
  if stage not in ("stage1", "stage2", "eval"):
    raise ConfigError(
        f"config.stage must be stage1, stage2 or eval (configs/stage1.py, "
        f"stage2.py, eval.py), got {stage!r}")
  if stage == "eval":
    return {"metrics": eval_pipeline.evaluate(config, workdir)}
  if stage == "stage1":
    return {"model": stage1.train(config, workdir)}
  final = config.get("final_eval") is not None and config.final_eval.enabled
  out = {}
  stage2_dir = workdir
  start_model = config.init.checkpoint or None
  if config.get("stage1") is not None and not config.init.checkpoint:
    stage1_dir = os.path.join(workdir, "stage1")
    s1 = stage1_config_of(config)
    log.info("=== stage 1 (in %s) ===", stage1_dir)
    with timed_phase("stage 1"):
      out["stage1_model"] = stage1.train(s1, stage1_dir)
    start_model = start_model_of(s1, stage1_dir)
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.init.checkpoint = out["stage1_model"]
    stage2_dir = os.path.join(workdir, "stage2")
  log.info("=== stage 2 (in %s) ===", stage2_dir)
  with timed_phase("stage 2"):
    out["model"] = stage2.train(config, stage2_dir)
  if final:  # Every process takes part (final_eval.py).
    eval_dir = os.path.join(workdir, "eval")
    log.info("=== evaluation (in %s) ===", eval_dir)
    with timed_phase("evaluation"):
      out["metrics"] = final_eval.run(config, out["model"], eval_dir,
                                      start_model)
  return out


def one_line_errors() -> tuple[type[BaseException], ...]:
  """The errors `main` prints as one line (besides ConfigError): each names
  its culprit.

  FileNotFoundError: a data path, catalog or model dir named by the config
  (the message names it); BadDataError: data above max_bad_fraction;
  DiskFullError: a checkpoint save out of disk (where, and how much);
  TableError: a table without a column the mapping names (which, where).
  """
  return (ConfigError, init_checkpoint.InitCheckpointError,
          nonfinite.NonFiniteLossError, bad_records.BadDataError,
          checkpoints.DiskFullError, tables.TableError, FileNotFoundError,
          NotADirectoryError)


def job(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The main job under app.run_job: runs it, prints the metrics; a
  pre-empted run exits 143 (128 + SIGTERM: schedulers read it so)."""
  try:
    with timed_phase("main job"):
      out = run(config, workdir)
  except preemption.Preempted as e:
    log.warning("%s", e)
    sys.exit(143)
  if out.get("metrics"):
    print(summary_table(out["metrics"]))
    print(json.dumps(out["metrics"], indent=2, sort_keys=True))


def summary_table(metrics: dict[str, dict]) -> str:
  """The retrieval numbers per system, one row each, for the console."""
  keys = ("ndcg@10", "recall@1", "recall@5", "recall@10", "mrr")
  lines = ["retrieval (test queries -> test products):",
           f"  {'system':<10}" + "".join(f"{k:>11}" for k in keys)]
  for name, m in metrics.items():
    lines.append(f"  {name:<10}" + "".join(
        f"{m[k]:>11.4f}" if k in m else f"{'-':>11}" for k in keys))
  return "\n".join(lines)


if __name__ == "__main__":
  app.run_job(PROG, job, config_help="Experiment config file[:variant].",
              errors=one_line_errors(), compilation_cache_in_workdir=True,
              flag_hint=config_files.stage1_override_error)
