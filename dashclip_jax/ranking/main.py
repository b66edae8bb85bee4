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

import sys

from dashclip_jax.runtime import flag_errors

PROG = "dashclip_jax.ranking.main"

if __name__ == "__main__":
  # A bad --config or override fails here, before the imports below.
  flag_errors.exit_on_bad_config(PROG, sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections

from dashclip_jax import app
from dashclip_jax.data import bad_records
from dashclip_jax.ranking import embeddings
from dashclip_jax.ranking import pipeline
from dashclip_jax.runtime.config_files import ConfigError
# pylint: enable=g-import-not-at-top,wrong-import-position


def check(config: ml_collections.ConfigDict) -> None:
  if config.get("stage") != "ranking":
    raise ConfigError(f"config.stage must be 'ranking' (configs/ranking.py), "
                      f"got {config.get('stage')!r}")
  if not config.embeddings:
    raise ConfigError(
        "--config.embeddings is required: an embedding export directory "
        "(dashclip_jax/index.py layout) or 'minilm'")


def job(config: ml_collections.ConfigDict, workdir: str) -> None:
  print(pipeline.run(config, workdir)["summary"])


if __name__ == "__main__":
  app.run_job(PROG, job, config_help="configs/ranking.py[:variant].",
              workdir_help="Output directory.", check=check,
              errors=(bad_records.BadDataError, FileNotFoundError,
                      NotADirectoryError, embeddings.MissingEmbeddingError,
                      ValueError))
