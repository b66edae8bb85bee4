r"""Relevance curation: train teacher -> mine -> label -> report.

  python -m dashclip_jax.curation.main --config=configs/curate.py:fashion \
      --workdir=/tmp/curate

Workdir layout (each step reuses what a previous run of it left):
  config.json       the resolved config
  teacher/          the trained teacher (teacher.json, params.msgpack)
  calibration.json  held-out seed agreement, threshold sweep, the threshold
  embeddings.npz    the mining model's query and product embeddings
  candidates.parquet, labels/part-*.parquet        unlabelled queries
  negatives/candidates.parquet, negatives/part-*   mined label-0 queries
  expanded/         relevance_train.csv, rows.parquet, manifest.json (stage 2:
                    --config.data.relevance_train_path=DIR/expanded, in the
                    command the job prints); expanded_no_negatives/ and
                    seed_only/ the same without the mined negatives and with
                    the seed alone (stage 2's comparisons)
  report/           report.md, metrics.json, reliability_*.png

Config, flag, data and path errors end in one line,
`dashclip_jax.curation.main: error: <message>`.
"""

from __future__ import annotations

import sys

from dashclip_jax.runtime import flag_errors
from dashclip_jax.runtime import host_memory

PROG = "dashclip_jax.curation.main"

if __name__ == "__main__":
  # Before the imports below (numpy and jax start threads): main.py's note.
  host_memory.reuse_freed_memory_unless_disabled()
  # A bad --config or override fails here, not after seconds of imports.
  flag_errors.exit_on_bad_config(PROG, sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
import logging
import time

import ml_collections

from dashclip_jax import app
from dashclip_jax.curation import pipeline
from dashclip_jax.curation import steps
from dashclip_jax.data import bad_records
from dashclip_jax.runtime.config_files import ConfigError
# pylint: enable=g-import-not-at-top,wrong-import-position

log = logging.getLogger("dashclip_jax")


def check(config: ml_collections.ConfigDict) -> None:
  if config.get("stage") != "curate":
    raise ConfigError(f"config.stage must be 'curate' (configs/curate.py), "
                      f"got {config.get('stage')!r}")
  steps.parse(config.run)


def job(config: ml_collections.ConfigDict, workdir: str) -> None:
  tick = time.time()
  out = pipeline.run(config, workdir)
  log.info("curation done in %.0f s", time.time() - tick)
  if out.get("summary"):
    print(out["summary"])


if __name__ == "__main__":
  app.run_job(PROG, job, config_help="configs/curate.py[:variant].",
              check=check, errors=(bad_records.BadDataError,
                                   FileNotFoundError, NotADirectoryError))
