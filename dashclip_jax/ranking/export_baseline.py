r"""Writes an alternative tower's embeddings in the export layout.

  python -m dashclip_jax.ranking.export_baseline \
      --config=configs/ranking.py:fashion --system=minilm --out=/tmp/minilm
  python -m dashclip_jax.ranking.export_baseline \
      --config=configs/ranking.py:fashion \
      --system=model:/work/runs/fashion_s1/models/0 --out=/tmp/init

The products and queries are those the ranking job's `config.data` names,
so `--config.embeddings=OUT` (or `--config.alternatives=NAME=OUT`) reads
them. The ranking job writes the same into its cache on its own when an
alternative is "minilm" or "NAME=model:DIR"; this is for reusing one export
across runs or inspecting it.
"""

from __future__ import annotations

import sys

from dashclip_jax.runtime import flag_errors

PROG = "dashclip_jax.ranking.export_baseline"

if __name__ == "__main__":
  # A bad --config or override fails here, before the imports below.
  flag_errors.exit_on_bad_config(PROG, sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
import logging

from absl import flags
import ml_collections

from dashclip_jax import app
from dashclip_jax.data import bad_records
from dashclip_jax.ranking import catalog_data
from dashclip_jax.ranking import embeddings
from dashclip_jax.runtime.config_files import ConfigError
# pylint: enable=g-import-not-at-top,wrong-import-position


_SYSTEM = flags.DEFINE_string("system", "minilm",
                              "'minilm' or 'model:MODEL_DIR'.")

log = logging.getLogger("dashclip_jax")


def check(config: ml_collections.ConfigDict) -> None:
  del config  # The system is a flag of its own.
  system = _SYSTEM.value
  if system != "minilm" and not system.startswith("model:"):
    raise ConfigError(
        f"--system={system!r}: use 'minilm' or 'model:MODEL_DIR'")


def job(config: ml_collections.ConfigDict, out: str) -> None:
  system = _SYSTEM.value
  data = catalog_data.load(config)
  if system == "minilm":
    embeddings.write_minilm_export(out, data)
  else:
    embeddings.write_model_export(out, data, system[len("model:"):])
  log.info("%s: %d products, %d queries -> %s", system, data.num_products,
           len(data.queries), out)


if __name__ == "__main__":
  app.run_job(PROG, job, config_help="configs/ranking.py[:variant].",
              workdir_flag="out", workdir_help="Export directory to write.",
              check=check, write_config_json=False,
              errors=(bad_records.BadDataError, FileNotFoundError))
