"""Runs the curation steps `config.run` names, in order (main.py's job).

The steps live in `curation.steps`, one module each; they share a
`steps.context.Context` and hand work on through the workdir.
"""

from __future__ import annotations

import logging

import ml_collections

from dashclip_jax.curation import steps as steps_lib
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import expand
from dashclip_jax.curation.steps import generate
from dashclip_jax.curation.steps import label
from dashclip_jax.curation.steps import mine
from dashclip_jax.curation.steps import negatives
from dashclip_jax.curation.steps import report
from dashclip_jax.curation.steps import teacher

log = logging.getLogger("dashclip_jax")

FUNCTIONS = {"teacher": teacher.teacher_step,
             "generate": generate.generate_step, "mine": mine.mine_step,
             "label": label.label_step, "negatives": negatives.negatives_step,
             "expand": expand.expand_step, "report": report.report_step}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """-> each step's result by name, and `summary`: what main prints."""
  steps = steps_lib.parse(config.run)
  ctx = context_lib.context(config, workdir)
  if "generate" not in steps and ({"mine", "negatives"} & set(steps)):
    generate.add_generated(ctx)  # An earlier run's (generate.writer set).
  out = {}
  for step in steps:
    log.info("=== curation: %s ===", step)
    out[step] = FUNCTIONS[step](ctx)
  next_run = expand.stage2_command(config, workdir) if "expand" in out else ""
  out["summary"] = "\n".join(
      s for s in (report.summary(out.get("report")), next_run) if s)
  return out
