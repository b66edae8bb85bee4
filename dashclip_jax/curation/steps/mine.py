"""The mine step: candidate pairs for the unlabelled queries.

Per unlabelled query its KNN products under the mining model plus a few
random ones (`curation.mining`), written to candidates.parquet; the
embeddings are cached in embeddings.npz (the negatives step reuses them).
`mining.max_queries` > 0 is a labelling budget: a seeded sample of that
many unlabelled queries is embedded and mined, and gets the candidates it
gets uncapped; the rest are neither embedded nor mined.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import pyarrow as pa

from dashclip_jax.curation import mining
from dashclip_jax.curation.steps import context as context_lib
from dashclip_jax.curation.steps import teacher as teacher_step_lib
from dashclip_jax.runtime.config_files import ConfigError

log = logging.getLogger("dashclip_jax")


def mining_model(ctx: context_lib.Context) -> str:
  """The embedding model's name: a model dir, or the teacher's start."""
  m = ctx.config.mining
  return m.model or f"teacher start ({ctx.config.teacher.init or 'random'})"


def _embedder(ctx: context_lib.Context):
  m = ctx.config.mining
  if m.model:
    return mining.ModelEmbedder(m.model, batch_size=m.batch_size)
  config, params, _ = teacher_step_lib.initial_teacher(ctx, kind="text")
  return mining.TextEmbedder(config.text, params["txt"], ctx.fields,
                             max_length=ctx.config.teacher.max_length,
                             batch_size=m.batch_size)


def _cached(ctx: context_lib.Context, path: str, model: str):
  """-> (query rows, their embeddings, product embeddings) in the cache,
  or None when it is absent or made for another model, queries or
  catalog."""
  if not os.path.isfile(path):
    return None
  c = np.load(path)
  # A cache from before query rows were recorded holds every query.
  rows = (c["query_rows"] if "query_rows" in c else
          np.arange(len(c["queries"]), dtype=np.int64))
  num_queries = int(c["num_queries"]) if "num_queries" in c else len(rows)
  if (str(c["model"]) != model or num_queries != len(ctx.queries) or
      len(c["products"]) != len(ctx.catalog)):
    return None
  return rows, c["queries"], c["products"]


def embeddings(ctx: context_lib.Context, rows: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """-> (float (R, E) embeddings of the queries `rows` (indices into
  ctx.queries; None: every query), float (N, E) every product's) under
  the mining model.

  Cached in embeddings.npz with the query rows it holds: a later call
  embeds only the rows missing there (the mine step embeds the unlabelled
  queries it mines, the negatives step every query).
  """
  model = mining_model(ctx)
  path = ctx.path("embeddings.npz")
  rows = (np.arange(len(ctx.queries), dtype=np.int64) if rows is None
          else np.asarray(rows, np.int64))
  cached = _cached(ctx, path, model)
  have, have_emb, products = cached if cached else (
      np.zeros(0, np.int64), None, None)
  missing = np.setdiff1d(rows, have)
  if products is None or len(missing):
    embedder = _embedder(ctx)
    log.info("mining: embedding %d queries and %d products with %s",
             len(missing), 0 if products is not None else len(ctx.catalog),
             model)
    if products is None:
      products = embedder.products(ctx.catalog)
    if have_emb is None:
      have_emb = np.zeros((0, products.shape[1]), np.float32)
    if len(missing):
      new = embedder.queries([ctx.queries[i] for i in missing.tolist()])
      have, have_emb = (np.concatenate([have, missing]),
                        np.concatenate([have_emb, new]))
      order = np.argsort(have)
      have, have_emb = have[order], have_emb[order]
    if jax.process_index() == 0:
      np.savez(path + ".tmp.npz", model=model, query_rows=have,
               num_queries=len(ctx.queries), queries=have_emb,
               products=products)
      os.replace(path + ".tmp.npz", path)
  return have_emb[np.searchsorted(have, rows)], products


def pair_table(ctx: context_lib.Context, query_index: np.ndarray,
               product_index: np.ndarray, **extra) -> pa.Table:
  """(query, product) index pairs as the table the label step reads."""
  query_index = np.asarray(query_index, np.int64)
  product_index = np.asarray(product_index, np.int64)
  take = lambda values, index: pa.array(values, pa.string()).take(index)
  return pa.table({
      "query_id": take(ctx.query_ids, query_index),
      "query": take(ctx.queries, query_index),
      "product_id": take(ctx.catalog.ids, product_index),
      "query_index": query_index, "product_index": product_index, **extra})


def labelled_pairs(ctx: context_lib.Context) -> np.ndarray:
  """int64 (L, 2): (unlabelled query, product index) pairs the seed labels
  already -- none, unless a seed query id recurs among the unlabelled
  queries. Query indices count from the first unlabelled query."""
  seed, first = ctx.data.seed, ctx.num_seed_queries
  of_id = {q: i for i, q in enumerate(seed.query_ids)}  # Per query.
  seed_query = np.asarray([of_id.get(q, -1) for q in ctx.query_ids[first:]],
                          np.int64)
  (unlabelled,) = np.nonzero(seed_query >= 0)
  order = np.argsort(seed.query, kind="stable")
  by_query = np.asarray(seed.query, np.int64)[order]
  lo = np.searchsorted(by_query, seed_query[unlabelled], "left")
  count = np.searchsorted(by_query, seed_query[unlabelled], "right") - lo
  within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
  rows = order[np.repeat(lo, count) + within]
  return np.stack([np.repeat(unlabelled, count),
                   np.asarray(seed.product, np.int64)[rows]], axis=1)


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
  if m.search not in mining.SEARCHES:  # Before the embedding, not after.
    raise ConfigError(f"mining.search={m.search!r}: use one of "
                      f"{mining.SEARCHES}")
  path = ctx.path("candidates.parquet")
  first = ctx.num_seed_queries
  num_unlabelled = len(ctx.queries) - first
  kept = budget_queries(num_unlabelled, m.max_queries, ctx.config.seed)
  if kept is None:
    kept = np.arange(num_unlabelled, dtype=np.int64)
  else:
    # Only the budget's queries are embedded and mined; each keeps the
    # candidates it gets uncapped (its random draws are seeded by its own
    # index, its top-k is its own).
    log.info("mining: a labelling budget of %d of the %d unlabelled "
             "queries (mining.max_queries)", len(kept), num_unlabelled)
  query_emb, product_emb = embeddings(ctx, kept + first)
  cand = mining.candidates(query_emb, product_emb, k=m.k,
                           num_random=m.num_random, seed=ctx.config.seed,
                           labelled=labelled_pairs(ctx), query_index=kept,
                           search=m.search, faiss_index=m.faiss_index)
  table = pair_table(ctx, cand["query"] + first, cand["product"],
                     source=pa.array(cand["source"], pa.string()))
  context_lib.write_table(table, path)
  log.info("mining: %d candidate pairs for %d unlabelled queries (%d knn, "
           "%d random)", len(table), len(np.unique(cand["query"])),
           int((cand["source"] == "knn").sum()),
           int((cand["source"] == "random").sum()))
  return {"pairs": len(table), "path": path}
