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

import logging

from absl import app
from absl import flags
from ml_collections import config_flags

from dashclip_jax import config_lib

PROG = "dashclip_jax.ranking.export_baseline"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/ranking.py[:variant].", lock_config=True)
_SYSTEM = flags.DEFINE_string("system", "minilm",
                              "'minilm' or 'model:MODEL_DIR'.")
_OUT = flags.DEFINE_string("out", None, "Export directory to write.")

log = logging.getLogger("dashclip_jax")


def main(argv) -> None:
  del argv
  config_lib.start_logging()
  config = config_lib.job_config(PROG, _CONFIG, _OUT.value)
  with config_lib.one_line_errors(PROG, (config_lib.ConfigError,)):
    system = _SYSTEM.value
    if system != "minilm" and not system.startswith("model:"):
      raise config_lib.ConfigError(
          f"--system={system!r}: use 'minilm' or 'model:MODEL_DIR'")
    config_lib.check_workdir(_OUT.value, "--out")
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import bad_records
  from dashclip_jax.ranking import catalog_data
  from dashclip_jax.ranking import embeddings
  # pylint: enable=g-import-not-at-top
  with config_lib.one_line_errors(PROG, (
      config_lib.ConfigError, bad_records.BadDataError, FileNotFoundError)):
    data = catalog_data.load(config)
    if system == "minilm":
      embeddings.write_minilm_export(_OUT.value, data)
    else:
      embeddings.write_model_export(_OUT.value, data,
                                    system[len("model:"):])
  log.info("%s: %d products, %d queries -> %s", system, data.num_products,
           len(data.queries), _OUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "out"])
  app.run(main, flags_parser=config_lib.flags_parser(PROG))
