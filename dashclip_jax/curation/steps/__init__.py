"""The curation steps, in run order, one module each.

  context    what every step shares: config, catalog, seed, workdir files
  teacher    train the teacher on the seed; calibrate and choose the
             confidence threshold on held-out seed queries
  generate   new queries for train products (template or LLM writer),
             test-query duplicates dropped; they join the unlabelled ones
  mine       candidate pairs for the unlabelled queries
  label      label the candidates (sharded, resumable)
  negatives  nearest queries per anchor product, labelled (mined 0s)
  expand     seed + kept teacher rows + mined 0s -> expanded/ (+ the
             comparison sets) with their manifest
  report     agreement, report.md, metrics.json

This package's own namespace stays light (no jax import), so the entry
point checks `config.run` before the slow imports; `pipeline.run` runs
the step modules.
"""

from __future__ import annotations

from dashclip_jax.runtime.config_files import ConfigError

STEPS = ("teacher", "generate", "mine", "label", "negatives", "expand",
         "report")


def parse(text: str) -> tuple[str, ...]:
  """"teacher,report" -> ("teacher", "report"); unknown names raise."""
  steps = tuple(s.strip() for s in text.split(",") if s.strip())
  unknown = [s for s in steps if s not in STEPS]
  if unknown or not steps:
    what = f"unknown step {unknown[0]!r}" if unknown else "names no step"
    raise ConfigError(f"config.run={text!r}: {what}; the steps are "
                      f"{','.join(STEPS)}")
  return tuple(s for s in STEPS if s in steps)  # Always in run order.
