"""The negatives step: per anchor product (one with a positive label) its
nearest queries under the mining model, labelled by the teacher; the
expand step keeps those it labels 0, the mined negatives stage 2's
`num_negatives` draws from."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dashclip_jax.curation import label_shards
from dashclip_jax.curation import mining
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import label as label_step_lib
from dashclip_jax.curation.steps import mine as mine_step_lib
from dashclip_jax.curation.steps import teacher as teacher_step_lib

log = logging.getLogger("dashclip_jax")


def negatives_step(ctx: context_lib.Context) -> dict:
  threshold = teacher_step_lib.calibration(ctx)["threshold"]["value"]
  n = ctx.config.negatives
  positives = label_shards.expanded([
      label_shards.seed_rows(ctx.data.seed, ctx.catalog),
      label_shards.confident(label_step_lib.labels(ctx, "labels"), threshold)])
  positives = positives.filter(pa.array(positives["label"].to_numpy() >= 1))
  products = pc.unique(positives["product_id"]).to_pylist()  # Per product.
  anchors = np.unique(np.asarray([ctx.catalog.index_of(p) for p in products],
                                 np.int64))
  if n.max_products and len(anchors) > n.max_products:
    rng = np.random.default_rng([ctx.config.seed, 1])
    anchors = np.sort(rng.choice(anchors, n.max_products, replace=False))
  # Left out: the seed's pairs (under the seed query's index and any
  # unlabelled query with its id) and the candidates already labelled.
  seed, first = ctx.data.seed, ctx.num_seed_queries
  candidates = context_lib.read_table(ctx.path("candidates.parquet"), "mine")
  labelled = mine_step_lib.labelled_pairs(ctx)
  exclude = np.concatenate([
      np.stack([seed.query, seed.product], 1).astype(np.int64),
      labelled + np.asarray([first, 0]),
      np.stack([candidates["query_index"].to_numpy(),
                candidates["product_index"].to_numpy()], 1)])
  query_emb, product_emb = mine_step_lib.embeddings(ctx)
  near = mining.nearest_queries(product_emb, query_emb, anchors, n.k,
                                exclude)
  table = mine_step_lib.pair_table(ctx, near["query"], near["product"])
  context_lib.write_table(table, ctx.path("negatives", "candidates.parquet"))
  log.info("negatives: %d (query, product) pairs for %d anchor products",
           len(table), len(anchors))
  paths = label_step_lib.label_table(ctx, table, ctx.path("negatives"))
  context_lib.sync("negatives")
  return {"anchors": len(anchors), "pairs": len(table), "shards": len(paths)}
