r"""Relevance curation: train teacher -> mine -> label -> report.

  python -m dashclip_jax.curation.main --config=configs/curate.py:fashion \
      --workdir=/tmp/curate

Workdir layout (each step reuses what a previous run of it left):
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

import logging
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from dashclip_jax import config_lib
from dashclip_jax import host_memory
from dashclip_jax import workdir_lock
from dashclip_jax.curation import steps

PROG = "dashclip_jax.curation.main"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/curate.py[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (resumes).")
_DISTRIBUTED = config_lib.DistributedFlags()

log = logging.getLogger("dashclip_jax")


def main(argv) -> None:
  del argv
  config_lib.start_logging()
  config = config_lib.job_config(PROG, _CONFIG, _WORKDIR.value)
  with config_lib.one_line_errors(PROG, (config_lib.ConfigError,)):
    if config.get("stage") != "curate":
      raise config_lib.ConfigError(
          f"config.stage must be 'curate' (configs/curate.py), got "
          f"{config.get('stage')!r}")
    steps.parse(config.run)
    config_lib.check_workdir(_WORKDIR.value)  # Before the slow imports.
    workdir_lock.hold_before_start(_WORKDIR.value, _DISTRIBUTED)
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.curation import pipeline
  from dashclip_jax.data import bad_records
  # pylint: enable=g-import-not-at-top
  with config_lib.one_line_errors(PROG, (
      config_lib.ConfigError, bad_records.BadDataError, FileNotFoundError,
      NotADirectoryError)):
    _DISTRIBUTED.initialize()
    workdir_lock.hold_after_initialize(_WORKDIR.value, _DISTRIBUTED)
    tick = time.time()
    out = pipeline.run(config, _WORKDIR.value)
  log.info("curation done in %.0f s", time.time() - tick)
  if out.get("summary"):
    print(out["summary"])


if __name__ == "__main__":
  host_memory.reuse_freed_memory_unless_disabled()
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=config_lib.flags_parser(PROG))

