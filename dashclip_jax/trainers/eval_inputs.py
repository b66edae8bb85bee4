"""The trainers' evaluation data: config.data -> eval batches.

Every item once, padded so every process runs the same number of batches
(rows with valid=0); ids travel with the rows, so the metrics do not depend
on how items were spread over processes. Stage 1 ranks test products; stage
2 selects its model on held-out train queries (`Stage2Eval`), and may score
the hand- and rule-written paraphrases over train products beside them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import ml_collections
import numpy as np

from dashclip_jax.data import eval_datasets
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.evaluation import paraphrase_queries
from dashclip_jax.evaluation import paraphrases
from dashclip_jax.evaluation import qrels as qrels_lib
from dashclip_jax import model as model_lib
from dashclip_jax.trainers import inputs

log = logging.getLogger("dashclip_jax")


def _eval_catalog(cfg):
  catalog = inputs.load_sources(cfg).test_catalog
  if cfg.eval_max_products and len(catalog) > cfg.eval_max_products:
    catalog = catalog.take(range(cfg.eval_max_products),
                           name=f"{catalog.name}[:{cfg.eval_max_products}]")
  return catalog


def stage1_eval(cfg: ml_collections.ConfigDict,
                model_config: model_lib.ModelConfig, global_batch: int
                ) -> list[dict[str, np.ndarray]]:
  """This process's padded eval batches of test products (ids/mask names)."""
  ds = eval_datasets.eval_products_dataset(
      _eval_catalog(cfg), batch_size=global_batch // jax.process_count(),
      image_size=inputs.image_size(cfg, model_config),
      max_length=cfg.text_max_length, text_prefix="",
      max_bad_fraction=cfg.max_bad_fraction)
  batches = list(ds)
  if ds.bad.num_bad:
    log.warning("stage 1 eval: %d of %d products ranked; %s",
                ds.bad.seen - ds.bad.num_bad, ds.bad.seen, ds.bad.summary())
  return batches


@dataclasses.dataclass
class Stage2Eval:
  """Held-out train queries and the train products judged for them.

  labels: the judged pairs, SparseQrels (Q, P) over product j =
  `product_rows[j]` (a train catalog row); unjudged pairs are ranked last
  (counted as 0). A dense int (Q, P) matrix with -1 where unjudged is read
  too (small hand-made cases).
  product_names[j]: how messages name product j ("styles.csv line 17
  (product 1865)"), e.g. when its image cannot be read.
  """
  product_rows: np.ndarray
  product_batches: Any
  query_batches: list[dict[str, np.ndarray]]
  labels: qrels_lib.SparseQrels
  query_ids: list[str]
  product_names: list[str] | None = None
  # What stage2.evaluate last warned about (it warns once per distinct set).
  reported_skips: Any = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    if not isinstance(self.labels, qrels_lib.SparseQrels):
      dense = np.asarray(self.labels)
      q, p = np.nonzero(dense >= 0)
      self.labels = qrels_lib.SparseQrels.from_pairs(
          q, p, dense[q, p], *dense.shape, source="Stage2Eval labels")


def stage2_eval(cfg: ml_collections.ConfigDict,
                model_config: model_lib.ModelConfig, global_batch: int
                ) -> Stage2Eval | None:
  """Model selection data: held-out queries over their judged products
  (None when no query is held out). Memory O(judged pairs).

  With a prepared train relevance each process reads only its shards and
  all of them gather the held-out queries (a collective)."""
  held = inputs.heldout_relevance(cfg)
  if not held.num_queries or not (held.label == 2).any():
    return None
  cap = cfg.get("heldout_eval_queries", 0)
  if cap and held.num_queries > cap:
    # The lowest hashes: a fixed, machine-independent sample of the split.
    first = np.sort(np.argsort(held.query_hashes(), kind="stable")[:cap])
    held = held.take_queries(first, f"data.heldout_eval_queries={cap}")
  return stage2_eval_of(held, inputs.load_sources(cfg).train_catalog, cfg,
                        model_config, global_batch)


def stage2_eval_of(relevance: relevance_lib.Relevance, catalog,
                   cfg: ml_collections.ConfigDict,
                   model_config: model_lib.ModelConfig, global_batch: int
                   ) -> Stage2Eval:
  """`relevance`'s queries (those with a label 2) over their judged products
  of `catalog` (the train catalog its product indices name), as the eval
  batches `stage2.evaluate` scores."""
  rows, cols = np.unique(relevance.product, return_inverse=True)
  labels = qrels_lib.SparseQrels.from_pairs(
      relevance.query, cols, relevance.label, relevance.num_queries,
      len(rows), source=relevance.name)
  keep = np.flatnonzero(labels.has_relevant())  # Metrics need a label 2.
  relevance = relevance.take_queries(keep, "with a label 2")
  labels = labels.take_queries(keep)
  local = global_batch // jax.process_count()
  catalog = catalog.take(rows)
  products = eval_datasets.eval_products_dataset(
      catalog, batch_size=local,
      image_size=inputs.image_size(cfg, model_config),
      max_length=cfg.text_max_length, max_bad_fraction=cfg.max_bad_fraction)
  queries = eval_datasets.eval_queries_dataset(
      relevance, batch_size=local, max_length=cfg.query_max_length)
  return Stage2Eval(rows, products, list(queries), labels,
                    list(relevance.query_ids),
                    [catalog.culprit(j) for j in range(len(catalog))])


def paraphrase_stage2_eval(cfg: ml_collections.ConfigDict,
                           model_config: model_lib.ModelConfig,
                           global_batch: int, max_products: int = 2000,
                           seed: int = 0, max_rule_queries: int = 300
                           ) -> Stage2Eval:
  """The hand-written and rule-written paraphrases over stage 2's TRAIN
  catalog as a `Stage2Eval` (what `stage2.evaluate` scores; the held-out
  set's construction, `stage2_eval`, over `paraphrases.paraphrase_relevance`'s
  pairs). `cfg` is stage 2's config.data."""
  catalog = inputs.load_sources(cfg).train_catalog
  queries = paraphrase_queries.PARAPHRASES + paraphrases.rule_paraphrases(
      catalog, max_rule_queries, seed=seed)
  rel = paraphrases.paraphrase_relevance(catalog, queries, max_products, seed)
  return stage2_eval_of(rel, catalog, cfg, model_config, global_batch)
