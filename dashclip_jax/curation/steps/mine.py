"""The mine step: candidate pairs for the unlabelled queries.

Per unlabelled query its KNN products under the mining model plus a few
random ones (`curation.mining`), written to candidates.parquet; the
embeddings are cached in embeddings.npz (the negatives step reuses them).
`mining.max_queries` > 0 is a labelling budget: a seeded sample of that
many unlabelled queries keeps its candidates (the same ones it gets
uncapped), the rest get none.
"""

from __future__ import annotations

import collections
import logging
import os

import jax
import numpy as np
import pyarrow as pa

from dashclip_jax.curation import mining
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import teacher as teacher_step_lib

log = logging.getLogger("dashclip_jax")


def mining_model(ctx: context_lib.Context) -> str:
  """The embedding model's name: a model dir, or the teacher's start."""
  m = ctx.config.mining
  return m.model or f"teacher start ({ctx.config.teacher.init or 'random'})"


def embeddings(ctx: context_lib.Context) -> tuple[np.ndarray, np.ndarray]:
  """-> (every query's embedding, every product's) under the mining model,
  cached in embeddings.npz."""
  m = ctx.config.mining
  model = mining_model(ctx)
  path = ctx.path("embeddings.npz")
  if os.path.isfile(path):
    cached = np.load(path)
    if (str(cached["model"]) == model and len(cached["queries"]) ==
        len(ctx.queries) and len(cached["products"]) == len(ctx.catalog)):
      return cached["queries"], cached["products"]
  if m.model:
    embedder = mining.ModelEmbedder(m.model, batch_size=m.batch_size)
  else:
    config, params, _ = teacher_step_lib.initial_teacher(ctx, kind="text")
    embedder = mining.TextEmbedder(config.text, params["txt"], ctx.fields,
                                   max_length=ctx.config.teacher.max_length,
                                   batch_size=m.batch_size)
  log.info("mining: embedding %d queries and %d products with %s",
           len(ctx.queries), len(ctx.catalog), model)
  queries, products = embedder.queries(ctx.queries), embedder.products(
      ctx.catalog)
  if jax.process_index() == 0:
    np.savez(path + ".tmp.npz", model=model, queries=queries,
             products=products)
    os.replace(path + ".tmp.npz", path)
  return queries, products


def pair_table(ctx: context_lib.Context, query_index: np.ndarray,
               product_index: np.ndarray, **extra) -> pa.Table:
  """(query, product) index pairs as the table the label step reads."""
  return pa.table({
      "query_id": [ctx.query_ids[q] for q in query_index],
      "query": [ctx.queries[q] for q in query_index],
      "product_id": [ctx.catalog.ids[p] for p in product_index],
      "query_index": np.asarray(query_index, np.int64),
      "product_index": np.asarray(product_index, np.int64), **extra})


def budget_queries(num_queries: int, max_queries: int, seed: int
                   ) -> np.ndarray | None:
  """Sorted indices of the `max_queries` unlabelled queries a labelling
  budget keeps (a seeded sample), or None when every query is kept."""
  if max_queries < 0:
    raise ValueError(f"mining.max_queries must be >= 0, got {max_queries}")
  if not max_queries or max_queries >= num_queries:
    return None
  rng = np.random.default_rng([seed, 1])  # 1: apart from other draws.
  return np.sort(rng.choice(num_queries, max_queries, replace=False))


def mine_step(ctx: context_lib.Context) -> dict:
  m = ctx.config.mining
  path = ctx.path("candidates.parquet")
  query_emb, product_emb = embeddings(ctx)
  first = ctx.num_seed_queries
  # Labelled pairs of unlabelled queries: none, unless a seed query id
  # recurs among them.
  labelled, by_id = set(), collections.defaultdict(set)
  for qid, pid in ctx.seed_pairs():
    by_id[qid].add(pid)
  for q in range(first, len(ctx.queries)):
    for pid in by_id.get(ctx.query_ids[q], ()):
      labelled.add((q - first, ctx.catalog.index_of(pid)))
  cand = mining.candidates(query_emb[first:], product_emb, k=m.k,
                           num_random=m.num_random, seed=ctx.config.seed,
                           labelled=labelled)
  kept = budget_queries(len(ctx.queries) - first, m.max_queries,
                        ctx.config.seed)
  if kept is not None:
    # Mined uncapped, then cut: a kept query's candidates do not depend on
    # the budget (its random ones are seeded by its own index).
    rows = np.isin(cand["query"], kept)
    cand = {name: col[rows] for name, col in cand.items()}
    log.info("mining: a labelling budget of %d of the %d unlabelled "
             "queries (mining.max_queries)", len(kept),
             len(ctx.queries) - first)
  table = pair_table(ctx, cand["query"] + first, cand["product"],
                     source=cand["source"].astype(str).tolist())
  context_lib.write_table(table, path)
  log.info("mining: %d candidate pairs for %d unlabelled queries (%d knn, "
           "%d random)", len(table), len(np.unique(cand["query"])),
           int((cand["source"] == "knn").sum()),
           int((cand["source"] == "random").sum()))
  return {"pairs": len(table), "path": path}
