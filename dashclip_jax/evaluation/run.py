r"""The evaluation job (`pipeline.evaluate`): encode, retrieve, probe, plot,
report, export.

  python -m dashclip_jax.evaluation.run --config=configs/eval.py:fashion \
      --config.checkpoint=DIR --workdir=OUT

Writes into OUT:
  metrics.json         {system: {"ndcg@10", "recall@1|5|10|50", "mrr",
                                 "aisle_acc", "aisle_f1", "relevance_acc",
                        "relevance_f1", "ann_recall@10", ...}}
  report.md            the same as tables, plus data and setup notes
  tsne_<system>.png    t-SNE of the ranked products, by aisle category
  cosine_<system>.png  cos(query, product) histograms per relevance label
  gallery.html         every system's top-k products for a sample of queries,
  gallery.png          marked by their qrels labels (`gallery.py`)
  export/              dashclip product/query embeddings + faiss index
                       (see `dashclip_jax/index.py`; searched by
                       `search.py`)

Systems: "dashclip" (config.checkpoint; multimodal product tower, query
tower), "init" (config.init_checkpoint, the un-adapted start), "bm25" and
"minilm" (titles only). Every system ranks the same products with the same
tie rule and metrics (`metrics.py`). What is ranked comes from
`eval_data.load_data`; metrics.json and report.md from `report.py`.
"""

from __future__ import annotations

import sys

from dashclip_jax.runtime import flag_errors

PROG = "evaluation.run"

if __name__ == "__main__":
  # A bad --config or override fails here, before the imports below.
  flag_errors.exit_on_bad_config(PROG, sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import os

import ml_collections

from dashclip_jax import app
from dashclip_jax import index as index_lib
from dashclip_jax.data import bad_records
from dashclip_jax.data import tables
from dashclip_jax.evaluation import pipeline
from dashclip_jax.runtime.config_files import ConfigError
# pylint: enable=g-import-not-at-top,wrong-import-position


def one_line_errors() -> tuple[type[BaseException], ...]:
  """The errors the job prints as one line (each names its culprit)."""
  return (ConfigError, bad_records.BadDataError, tables.TableError,
          index_lib.NonFiniteEmbeddingError, FileNotFoundError,
          NotADirectoryError)


def check(config: ml_collections.ConfigDict) -> None:
  if config.get("stage") in ("stage1", "stage2"):
    raise ConfigError(
        f"--config is a {config.stage} config: run it with python -m "
        "dashclip_jax.main (an eval config is configs/eval.py)")


def job(config: ml_collections.ConfigDict, workdir: str) -> None:
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  print(json.dumps(pipeline.evaluate(config, workdir), indent=2,
                   sort_keys=True))


if __name__ == "__main__":
  app.run_job(PROG, job, config_help="configs/eval.py[:fashion|synthetic]",
              workdir_help="Output directory.", check=check,
              errors=one_line_errors())
