r"""Evaluation: retrieval (graded), baselines, probes, plots, report, export.

  python -m dashclip_jax.evaluation.run --config=configs/eval.py:fashion \
      --config.checkpoint=/tmp/dc/stage2 --workdir=/tmp/dc_eval
  python -m dashclip_jax.evaluation.run --config=configs/eval.py:synthetic \
      --config.checkpoint=/tmp/dc/stage2 --workdir=/tmp/dc_eval_syn

(`python -m dashclip_jax.main` with the same flags does the same.)
`config.checkpoint` is required.

Variants:
  fashion    the real catalog layout (styles.csv + images/<id>.jpg): rank
             every `data.split` product for each query of `data.qrels_path`.
  synthetic  the embedded synthetic catalog (dashclip_jax.data.synthetic).

Any graded query file in the `query_id, query, product_id, label` layout can
be evaluated against any catalog: --config.data.catalog_dir=...
--config.data.qrels_path=... --config.data.split=test.
Add the un-adapted start point as a baseline with
--config.init_checkpoint=DIR --config.baselines='("bm25","minilm","init")'.
"""

import ml_collections

from dashclip_jax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="fashion")
  v = arg.variant
  if v not in ("fashion", "synthetic"):
    raise ValueError(f"unknown eval variant {v!r}: fashion or synthetic")
  c = ml_collections.ConfigDict()
  c.stage = "eval"         # dashclip_jax.main runs it as evaluation.run does.
  c.checkpoint = ""        # Required: model dir or training workdir.
  c.init_checkpoint = ""   # For the "init" baseline: the un-adapted model.
  c.batch_size = 32        # Encoder batch (one compiled shape).
  c.data = ml_collections.ConfigDict(dict(
      source="csv" if v == "fashion" else "synthetic",
      catalog_dir="../shared/data/fashion" if v == "fashion" else "",
      catalog_file="styles.csv",  # Table inside catalog_dir (CSV/Parquet).
      qrels_path="",              # "": <catalog_dir>/qrels_test.csv.
      split="test",               # Products ranked; "all": the whole table.
      probe_split="train",        # Aisle probe trains on this split ...
      max_probe_products=2000,    # ... at most this many (encoding cost).
      # Catalog rows skipped (bad image, malformed, ...) above this fraction
      # stop the evaluation; the split of a table without a split column
      # hashes this fraction of ids into "test" (as in training).
      max_bad_fraction=0.01,
      test_fraction=0.1,
      # Above this fraction of skipped qrels rows (unknown product, bad
      # label, ...) the evaluation stops; 0: any skipped row is an error.
      qrels_max_bad_fraction=0.0,
      # Only for source="synthetic" (the arguments of synthetic_data).
      synthetic=dict(num_products=400, num_test_queries=60, image_size=96,
                     seed=0, bad_images=0),
  ))
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
