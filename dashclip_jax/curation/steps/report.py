"""The report step: agreement with held-out human labels, the manifest,
report.md, metrics.json and the reliability plots (`curation.report_writer`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np

from dashclip_jax.curation import agreement as agreement_lib
from dashclip_jax.curation import label_shards
from dashclip_jax.curation import report_writer as report_lib
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import expand as expand_step_lib
from dashclip_jax.curation.steps import generate as generate_step_lib
from dashclip_jax.curation.steps import teacher as teacher_step_lib
from dashclip_jax.data import relevance as relevance_lib

log = logging.getLogger("dashclip_jax")


def truth_sample(ctx: context_lib.Context) -> relevance_lib.Relevance | None:
  """The unlabelled queries' true labels (a seeded sample of pairs when
  report.max_truth_pairs is set); None outside the experiment."""
  truth = ctx.data.truth
  cap = ctx.config.report.max_truth_pairs
  if truth is None or not cap or len(truth) <= cap:
    return truth
  rng = np.random.default_rng([ctx.config.seed, 2])
  keep = np.sort(rng.choice(len(truth), cap, replace=False))
  return dataclasses.replace(truth, query=truth.query[keep],
                             product=truth.product[keep],
                             label=truth.label[keep])


def report_step(ctx: context_lib.Context) -> dict:
  calibration = teacher_step_lib.calibration(ctx)
  metrics: dict[str, Any] = {"validation": calibration["validation"],
                             "threshold": calibration["threshold"]}
  truth = truth_sample(ctx)
  if truth is not None:
    queries, products, labels = context_lib.pairs_of(truth, ctx.catalog)
    log.info("report: teacher on %d pairs of the unlabelled queries' true "
             "labels", len(labels))
    probs = context_lib.load_teacher(ctx).predict(queries, products)
    metrics["truth"] = agreement_lib.agreement(
        probs, labels, ctx.config.report.num_bins)
    metrics["truth"]["kept_at_threshold"] = agreement_lib.threshold_sweep(
        probs, labels, [calibration["threshold"]["value"]])[0]
  expanded_manifest = ctx.path("expanded", "manifest.json")
  if os.path.isfile(expanded_manifest):
    with open(expanded_manifest) as f:
      e = json.load(f)
    metrics["expanded"] = {"path": ctx.path("expanded", label_shards.CSV_NAME),
                           "rows": e["rows"],
                           "by_source_label": e["by_source_label"]}
  generated = generate_step_lib.summary(ctx)
  if generated is not None:
    metrics["generated"] = generated
  path = ctx.path("report", "report.md")
  if jax.process_index() == 0:
    path = report_lib.write(ctx.path("report"), metrics,
                            expand_step_lib.manifest(ctx))
  log.info("report: %s", path)
  return {"path": path, "metrics": metrics}


def summary(report: dict | None) -> str:
  """The report step's agreement numbers, a line per scored set."""
  if not report:
    return ""
  lines = [f"report: {report['path']}"]
  for name in ("validation", "truth"):
    m = report["metrics"].get(name)
    if m:
      lines.append(
          f"  {name:<10} pairs {m['pairs']:>6}  accuracy {m['accuracy']:.4f}"
          f"  kappa {m['kappa']:.4f}  kappa_linear {m['kappa_linear']:.4f}"
          f"  ece {m['ece']:.4f}  confusion {m['confusion']}")
  return "\n".join(lines)
