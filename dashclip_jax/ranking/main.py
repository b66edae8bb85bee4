r"""Downstream ranking: simulate sessions, train DCN-V2 click models with and
without embedding towers, report AUC on the next week.

  python -m dashclip_jax.ranking.main --config=configs/ranking.py:fashion \
      --config.embeddings=/work/runs/fashion_s2/export --workdir=/tmp/rank

Workdir layout:
  config.json   the resolved config
  cache/        sim-<key>/ (sessions.npz, sim.json) and embeddings/ (the
                MiniLM / model towers), unless --config.cache_dir is set
  report.md, metrics.json, roc.png

Config, flag, data and path errors end in one line,
`dashclip_jax.ranking.main: error: <message>`.
"""

from __future__ import annotations

import logging

from absl import app
from absl import flags
from ml_collections import config_flags

from dashclip_jax import config_lib
from dashclip_jax import host_memory
from dashclip_jax import workdir_lock

PROG = "dashclip_jax.ranking.main"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/ranking.py[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_DISTRIBUTED = config_lib.DistributedFlags()

log = logging.getLogger("dashclip_jax")


def main(argv) -> None:
  del argv
  config_lib.start_logging()
  config = config_lib.job_config(PROG, _CONFIG, _WORKDIR.value)
  with config_lib.one_line_errors(PROG, (config_lib.ConfigError,)):
    if config.get("stage") != "ranking":
      raise config_lib.ConfigError(
          f"config.stage must be 'ranking' (configs/ranking.py), got "
          f"{config.get('stage')!r}")
    if not config.embeddings:
      raise config_lib.ConfigError(
          "--config.embeddings is required: an embedding export directory "
          "(dashclip_jax/index.py layout) or 'minilm'")
    config_lib.check_workdir(_WORKDIR.value)  # Before the slow imports.
    workdir_lock.hold_before_start(_WORKDIR.value, _DISTRIBUTED)
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import bad_records
  from dashclip_jax.ranking import embeddings
  from dashclip_jax.ranking import pipeline
  # pylint: enable=g-import-not-at-top
  with config_lib.one_line_errors(PROG, (
      config_lib.ConfigError, bad_records.BadDataError, FileNotFoundError,
      NotADirectoryError, embeddings.MissingEmbeddingError, ValueError)):
    _DISTRIBUTED.initialize()
    workdir_lock.hold_after_initialize(_WORKDIR.value, _DISTRIBUTED)
    out = pipeline.run(config, _WORKDIR.value)
  print(out["summary"])


if __name__ == "__main__":
  host_memory.reuse_freed_memory_unless_disabled()
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=config_lib.flags_parser(PROG))
