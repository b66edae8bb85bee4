"""The trainers' data: config.data -> train iterators and eval batches.

Train data is read in `num_shards` shards (default: one per process). Each
process iterates its shards and concatenates their rows, so the global batch
is shard 0's rows, then shard 1's, ... whatever the number of processes: a
run with 1 process and num_shards=2 sees exactly the batches of a 2-process
run (used to check multi-host runs against one host, bit for bit).

Eval data: every item once, padded so every process runs the same number of
batches (rows with valid=0); ids travel with the rows, so the metrics do not
depend on how items were spread over processes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.config_lib import ConfigError
from dashclip_jax.data import eval_datasets
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import sources as sources_lib
from dashclip_jax.data import train_datasets
from dashclip_jax.evaluation import metrics as eval_metrics

log = logging.getLogger("dashclip_jax")

# The config.data fields that name the data (sources.load_sources reads them;
# retired ones only to name their replacement).
SOURCE_KEYS = sources_lib.SOURCE_KEYS + sources_lib.RETIRED_KEYS


@functools.lru_cache(maxsize=4)
def _sources(frozen_cfg: str) -> sources_lib.Sources:
  return sources_lib.load_sources(json.loads(frozen_cfg))


def _frozen(cfg: ml_collections.ConfigDict) -> str:
  d = cfg.to_dict()
  return json.dumps({k: d[k] for k in SOURCE_KEYS if k in d}, sort_keys=True,
                    default=str)


def load_sources(cfg: ml_collections.ConfigDict) -> sources_lib.Sources:
  """Train/test catalogs and relevance named by `cfg` (cached per config)."""
  return _sources(_frozen(cfg))


@functools.lru_cache(maxsize=4)
def _split(frozen_cfg: str, fraction: float
           ) -> tuple[relevance_lib.Relevance, relevance_lib.Relevance]:
  # Once per config: the training pairs and the held-out evaluation both
  # ask for it, and at 32M pairs a split is seconds and two copies.
  return _sources(frozen_cfg).train_relevance.split_queries(fraction)


def image_size(cfg: ml_collections.ConfigDict,
               model_config: model_lib.ModelConfig) -> int:
  return cfg.image_size or model_config.vision.image_size


class ShardedBatches:
  """This process's shards of the train data, rows concatenated per batch.

  get_state/set_state give a JSON-friendly state (one entry per shard).
  With `product_features` (float32 (num products, D), stage 2's cached
  table), each batch gains its rows by `product_id`.
  """

  def __init__(self, make_dataset, global_batch: int, num_shards: int,
               product_features: np.ndarray | None = None):
    self.product_features = product_features
    n_proc, proc = jax.process_count(), jax.process_index()
    num_shards = num_shards or n_proc
    if num_shards % n_proc:
      raise ConfigError(f"data.num_shards={num_shards} is not a multiple of "
                        f"the {n_proc} processes")
    if global_batch % num_shards:
      raise ConfigError(f"global batch {global_batch} is not divisible by "
                        f"data.num_shards={num_shards}")
    per_proc = num_shards // n_proc
    self.shards = list(range(proc * per_proc, (proc + 1) * per_proc))
    self._iters = [iter(make_dataset(global_batch // num_shards,
                                     (s, num_shards))) for s in self.shards]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._iters]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if self.product_features is not None:
      batch["product_features"] = self.product_features[batch["product_id"]]
    return batch

  def bad_summary(self) -> str:
    return "; ".join(it.bad.summary() for it in self._iters)

  def bad_report(self) -> tuple[int, int, str]:
    """-> (examples seen, bad images among them, summary naming the first
    culprits) of the data so far. The counts are over every process (a
    collective then: call it on all of them at the same step); the summary
    is this process's shards'."""
    seen = sum(it.bad.seen for it in self._iters)
    bad = sum(it.bad.num_bad for it in self._iters)
    if jax.process_count() > 1:
      seen, bad = (int(x) for x in np.sum(multihost_utils.process_allgather(
          np.asarray([seen, bad], np.int64)), axis=0))
    summary = "; ".join(it.bad.summary() for it in self._iters
                        if it.bad.num_bad)
    return seen, bad, summary

  def get_state(self) -> dict[str, Any]:
    return {"shards": {str(s): it.get_state()
                       for s, it in zip(self.shards, self._iters)}}

  def set_state(self, state: dict[str, Any]) -> None:
    saved = state.get("shards", {})
    missing = [s for s in self.shards if str(s) not in saved]
    if missing:
      raise ValueError(f"the checkpoint's data state has no shard {missing} "
                       f"(it has {sorted(saved)}): was data.num_shards or "
                       "the process count changed? Keep them to resume "
                       "exactly.")
    for s, it in zip(self.shards, self._iters):
      it.set_state(saved[str(s)])


def _common_kwargs(cfg, model_config, seed):
  return dict(image_size=image_size(cfg, model_config),
              min_scale=cfg.min_scale, augment=cfg.augment, seed=seed,
              worker_count=cfg.workers,
              worker_buffer_size=cfg.worker_buffer_size,
              read_threads=cfg.read_threads or None,  # 0: by worker count.
              max_bad_fraction=cfg.max_bad_fraction,
              min_seen_for_bad_fraction=cfg.min_seen_for_bad_fraction)


def stage1_train(cfg: ml_collections.ConfigDict,
                 model_config: model_lib.ModelConfig, global_batch: int,
                 seed: int) -> ShardedBatches:
  """Endless stage-1 batches (image, ids, mask, product_id, category)."""
  catalog = load_sources(cfg).train_catalog
  return ShardedBatches(
      lambda b, shard: train_datasets.stage1_dataset(
          catalog, batch_size=b, max_length=cfg.text_max_length, shard=shard,
          **_common_kwargs(cfg, model_config, seed)),
      global_batch, cfg.num_shards)


def stage2_train(cfg: ml_collections.ConfigDict,
                 model_config: model_lib.ModelConfig, global_batch: int,
                 seed: int, frozen_tower: bool = False,
                 product_table: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> ShardedBatches:
  """Endless stage-2 batches (one positive pair per row, mined negatives).

  frozen_tower: the product tower runs in eval mode, so its images get the
    eval transform (no augmentation) like the embeddings it is judged by.
  product_table: (features (P, D), ok (P,)) of the train catalog: batches
    carry `product_features` instead of images (`ok` False: skipped).
  """
  src = load_sources(cfg)
  kept, _ = train_relevance(cfg)
  kwargs = _common_kwargs(cfg, model_config, seed)
  if frozen_tower:
    kwargs["augment"] = False
  features, ok = product_table if product_table is not None else (None, None)
  return ShardedBatches(
      lambda b, shard: train_datasets.stage2_dataset(
          src.train_catalog, kept, batch_size=b,
          query_length=cfg.query_max_length,
          title_length=cfg.text_max_length, num_negatives=cfg.num_negatives,
          label1_policy=cfg.label1_policy, label1_weight=cfg.label1_weight,
          max_relevant=cfg.max_relevant, shard=shard, product_ok=ok,
          **kwargs),
      global_batch, cfg.num_shards, product_features=features)


def train_relevance(cfg: ml_collections.ConfigDict
                    ) -> tuple[relevance_lib.Relevance, relevance_lib.Relevance]:
  """-> (training queries, held-out queries) of the train relevance data.

  `heldout_query_fraction` of the queries (by a hash of their text) never
  train: stage 2 selects its model on them, never on the test set.
  """
  if load_sources(cfg).train_relevance is None:
    raise ConfigError("stage 2 needs graded relevance data for the train "
                      f"catalog; data source {cfg.source!r} "
                      "has none (e.g. relevance_train.csv)")
  return _split(_frozen(cfg), float(cfg.heldout_query_fraction))


def train_products(cfg: ml_collections.ConfigDict,
                   model_config: model_lib.ModelConfig, global_batch: int
                   ) -> tuple[int, Any]:
  """-> (number of train products, this process's padded eval-transform
  batches of them, read lazily): what stage 2's product table is made of."""
  catalog = load_sources(cfg).train_catalog
  ds = eval_datasets.eval_products_dataset(
      catalog, batch_size=global_batch // jax.process_count(),
      image_size=image_size(cfg, model_config),
      max_length=cfg.text_max_length, max_bad_fraction=cfg.max_bad_fraction)
  return len(catalog), ds


def _eval_catalog(cfg):
  catalog = load_sources(cfg).test_catalog
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
      image_size=image_size(cfg, model_config),
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
  labels: eval_metrics.SparseQrels
  query_ids: list[str]
  product_names: list[str] | None = None
  # What stage2.evaluate last warned about (it warns once per distinct set).
  reported_skips: Any = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    if not isinstance(self.labels, eval_metrics.SparseQrels):
      dense = np.asarray(self.labels)
      q, p = np.nonzero(dense >= 0)
      self.labels = eval_metrics.SparseQrels.from_pairs(
          q, p, dense[q, p], *dense.shape, source="Stage2Eval labels")


def stage2_eval(cfg: ml_collections.ConfigDict,
                model_config: model_lib.ModelConfig, global_batch: int
                ) -> Stage2Eval | None:
  """Model selection data: held-out queries over their judged products
  (None when no query is held out). Memory O(judged pairs)."""
  _, held = train_relevance(cfg)
  if not held.num_queries or not (held.label == 2).any():
    return None
  cap = cfg.get("heldout_eval_queries", 0)
  if cap and held.num_queries > cap:
    # The lowest hashes: a fixed, machine-independent sample of the split.
    first = np.sort(np.argsort(held.query_hashes(), kind="stable")[:cap])
    held = held.take_queries(first, f"data.heldout_eval_queries={cap}")
  rows, cols = np.unique(held.product, return_inverse=True)
  labels = eval_metrics.SparseQrels.from_pairs(
      held.query, cols, held.label, held.num_queries, len(rows),
      source=held.name)
  keep = np.flatnonzero(labels.has_relevant())  # Metrics need a label 2.
  held = held.take_queries(keep, "with a label 2")
  labels = labels.take_queries(keep)
  local = global_batch // jax.process_count()
  catalog = load_sources(cfg).train_catalog.take(rows)
  products = eval_datasets.eval_products_dataset(
      catalog, batch_size=local, image_size=image_size(cfg, model_config),
      max_length=cfg.text_max_length, max_bad_fraction=cfg.max_bad_fraction)
  queries = eval_datasets.eval_queries_dataset(
      held, batch_size=local, max_length=cfg.query_max_length)
  return Stage2Eval(rows, products, list(queries), labels,
                    list(held.query_ids),
                    [catalog.culprit(j) for j in range(len(catalog))])
