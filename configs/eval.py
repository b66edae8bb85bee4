r"""Evaluation: retrieval (graded), baselines, probes, plots, report, export.

  python -m dashclip_jax.evaluation.run --config=configs/eval.py:fashion \
      --config.checkpoint=/tmp/dc/stage2 --workdir=/tmp/dc_eval
  python -m dashclip_jax.evaluation.run --config=configs/eval.py:synthetic \
      --config.checkpoint=/tmp/dc/stage2 --workdir=/tmp/dc_eval_syn

(`python -m dashclip_jax.main` with the same flags does the same.)
`config.checkpoint` is required.

Variants:
  fashion    the real catalog layout (styles.csv + images/<id>.jpg): rank
             every `data.split` product for each query of that split's
             relevance (test: qrels_test.csv).
  synthetic  the embedded synthetic catalog the demo main job trains on
             (dashclip_jax.data.synthetic).

`config.data` is the block every job reads (configs/common.py data_block): any
graded query file in the `query_id, query, product_id, label` layout can be
evaluated against any catalog: --config.data.source=table
--config.data.catalog_path=... --config.data.relevance_test_path=...
(or --config.data.path=DIR for a folder in the fashion layout).
Add the un-adapted start point as a baseline with
--config.init_checkpoint=DIR --config.baselines='("bm25","minilm","init")'.
"""

import ml_collections

from dashclip_jax.runtime import config_files

common = config_files.sibling_config(__file__, "common")


def get_config(arg=None):
  arg = config_files.parse_arg(arg, variant="fashion")
  v = arg.variant
  if v not in ("fashion", "synthetic"):
    raise ValueError(f"unknown eval variant {v!r}: fashion or synthetic")
  c = ml_collections.ConfigDict()
  c.stage = "eval"         # dashclip_jax.main runs it as evaluation.run does.
  c.checkpoint = ""        # Required: model dir or training workdir.
  c.init_checkpoint = ""   # For the "init" baseline: the un-adapted model.
  c.batch_size = 32        # Encoder batch (one compiled shape).
  # The data every job reads: the fashion run's, or the demo's synthetic
  # catalog. Strict about qrels: a skipped row (e.g. a judged product
  # missing from the ranked split) changes what the metrics measure.
  c.data = common.data_block("fashion" if v == "fashion" else "demo")
  c.data.relevance_test_max_bad_fraction = 0.0
  # Systems besides "dashclip": "bm25", "minilm" (titles only) and "init".
  c.baselines = ("bm25", "minilm")
  c.knn = ml_collections.ConfigDict(dict(
      # Ranked products per query (at most the catalog; 0: the whole of it).
      # Bounded so that Q x depth, not Q x N, is held: recall@<=50 and
      # NDCG@10 are exact, MRR is MRR@depth (report.md marks it).
      depth=1000,
      mesh_axis="data",
      ann="hnsw",       # faiss index for the ANN recall: hnsw, ivf, flat.
      ann_k=10,
  ))
  c.probes = ml_collections.ConfigDict(dict(
      aisle=True, relevance=True,
      zeros_per_query=20,  # Sampled label-0 pairs per query (relevance).
      aisle_c=1.0, relevance_c=0.01,  # Inverse L2 strengths (probes.py).
      seed=0))
  c.plots = ml_collections.ConfigDict(dict(enabled=True, tsne_top=10))
  c.export = ml_collections.ConfigDict(dict(
      enabled=True, index="hnsw", dir=""))  # "": <workdir>/export.
  # gallery.html (self-contained) + gallery.png beside report.md: each
  # system's top k products for num_queries queries drawn by seed, plus
  # `queries`: comma-separated query ids or texts ("pt00012,men blue
  # shirts"; a string, so multi-word texts need no tuple quoting; a text
  # holding a comma is given by its id).
  c.gallery = ml_collections.ConfigDict(dict(
      enabled=True, num_queries=12, queries="", k=5, seed=0))
  return c
