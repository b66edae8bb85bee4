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

import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from dashclip_jax import config_lib
from dashclip_jax.evaluation import pipeline
from dashclip_jax import index as index_lib
from dashclip_jax import workdir_lock


# -- command line ------------------------------------------------------------
# Flags are defined only when this module is the program, so that importing
# it (the main job's final evaluation does) leaves the importer's flags alone.


PROG = "evaluation.run"


def one_line_errors() -> tuple[type[BaseException], ...]:
  """The errors `main` prints as one line (each names its culprit)."""
  # pylint: disable=g-import-not-at-top
  from dashclip_jax.data import bad_records
  from dashclip_jax.data import tables
  # pylint: enable=g-import-not-at-top
  return (config_lib.ConfigError, bad_records.BadDataError, tables.TableError,
          index_lib.NonFiniteEmbeddingError, FileNotFoundError,
          NotADirectoryError)


def main(argv) -> None:
  if len(argv) > 1:
    sys.exit(f"{PROG}: error: unexpected arguments: {argv[1:]}")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  with config_lib.one_line_errors(PROG, one_line_errors()):
    if cfg.get("stage") in ("stage1", "stage2"):
      raise config_lib.ConfigError(
          f"--config is a {cfg.stage} config: run it with python -m "
          "dashclip_jax.main (an eval config is configs/eval.py)")
    config_lib.check_workdir(workdir)
    # One job per workdir, as main/curation/ranking (single process: the
    # lock is taken before any work).
    workdir_lock.hold(workdir)
    results = pipeline.evaluate(cfg, workdir)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  config_flags.DEFINE_config_file(
      "config", None, "configs/eval.py[:fashion|synthetic]", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=config_lib.flags_parser(PROG))
