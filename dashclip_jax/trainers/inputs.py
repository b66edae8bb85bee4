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
from typing import Any

import jax
import ml_collections
import numpy as np

from dashclip_jax import model as model_lib
from dashclip_jax.data import pipelines
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import sources as sources_lib


# The config.data fields that name the data (sources.load_sources reads them).
SOURCE_KEYS = ("source", "path", "catalog_path", "catalog_dir",
               "catalog_file", "relevance_train_path", "relevance_test_path",
               "tfds_dir", "synthetic", "max_bad_fraction", "test_fraction")


@functools.lru_cache(maxsize=4)
def _sources(frozen_cfg: str) -> sources_lib.Sources:
  return sources_lib.load_sources(json.loads(frozen_cfg))


def load_sources(cfg: ml_collections.ConfigDict) -> sources_lib.Sources:
  """Train/test catalogs and relevance named by `cfg` (cached per config)."""
  d = cfg.to_dict()
  return _sources(json.dumps({k: d[k] for k in SOURCE_KEYS if k in d},
                             sort_keys=True, default=str))


def image_size(cfg: ml_collections.ConfigDict,
               model_config: model_lib.ModelConfig) -> int:
  return cfg.image_size or model_config.vision.image_size


class ShardedBatches:
  """This process's shards of the train data, rows concatenated per batch.

  get_state/set_state give a JSON-friendly state (one entry per shard).
  """

  def __init__(self, make_dataset, global_batch: int, num_shards: int):
    n_proc, proc = jax.process_count(), jax.process_index()
    num_shards = num_shards or n_proc
    if num_shards % n_proc:
      raise ValueError(f"data.num_shards={num_shards} is not a multiple of "
                       f"the {n_proc} processes")
    if global_batch % num_shards:
      raise ValueError(f"global batch {global_batch} is not divisible by "
                       f"data.num_shards={num_shards}")
    per_proc = num_shards // n_proc
    self.shards = list(range(proc * per_proc, (proc + 1) * per_proc))
    self._iters = [iter(make_dataset(global_batch // num_shards,
                                     (s, num_shards))) for s in self.shards]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._iters]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def bad_summary(self) -> str:
    return "; ".join(it.bad.summary() for it in self._iters)

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
              max_bad_fraction=cfg.max_bad_fraction)


def stage1_train(cfg: ml_collections.ConfigDict,
                 model_config: model_lib.ModelConfig, global_batch: int,
                 seed: int) -> ShardedBatches:
  """Endless stage-1 batches (image, ids, mask, product_id, category)."""
  catalog = load_sources(cfg).train_catalog
  return ShardedBatches(
      lambda b, shard: pipelines.stage1_dataset(
          catalog, batch_size=b, max_length=cfg.text_max_length, shard=shard,
          **_common_kwargs(cfg, model_config, seed)),
      global_batch, cfg.num_shards)


def stage2_train(cfg: ml_collections.ConfigDict,
                 model_config: model_lib.ModelConfig, global_batch: int,
                 seed: int) -> ShardedBatches:
  """Endless stage-2 batches (one positive pair per row, mined negatives)."""
  src = load_sources(cfg)
  if src.train_relevance is None:
    raise ValueError("stage 2 needs graded relevance data for the train "
                     f"catalog; data source {cfg.source!r} "
                     "has none (e.g. relevance_train.csv)")
  return ShardedBatches(
      lambda b, shard: pipelines.stage2_dataset(
          src.train_catalog, src.train_relevance, batch_size=b,
          query_length=cfg.query_max_length,
          title_length=cfg.text_max_length, num_negatives=cfg.num_negatives,
          label1_policy=cfg.label1_policy, label1_weight=cfg.label1_weight,
          shard=shard, **_common_kwargs(cfg, model_config, seed)),
      global_batch, cfg.num_shards)


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
  ds = pipelines.eval_products_dataset(
      _eval_catalog(cfg), batch_size=global_batch // jax.process_count(),
      image_size=image_size(cfg, model_config),
      max_length=cfg.text_max_length, text_prefix="",
      max_bad_fraction=cfg.max_bad_fraction)
  return list(ds)


@dataclasses.dataclass
class Stage2Eval:
  """Test products and queries of this process, and the label-2 qrels.

  relevant[q] = catalog rows of the label-2 products of query q.
  """
  product_batches: list[dict[str, np.ndarray]]
  query_batches: list[dict[str, np.ndarray]]
  relevant: list[set[int]]


def stage2_eval(cfg: ml_collections.ConfigDict,
                model_config: model_lib.ModelConfig, global_batch: int
                ) -> Stage2Eval:
  src = load_sources(cfg)
  catalog = _eval_catalog(cfg)
  if src.test_relevance is None:
    raise ValueError("stage-2 eval needs graded test queries (e.g. "
                     "qrels_test.csv); the data source has none")
  rel: relevance_lib.Relevance = src.test_relevance
  local = global_batch // jax.process_count()
  products = pipelines.eval_products_dataset(
      catalog, batch_size=local, image_size=image_size(cfg, model_config),
      max_length=cfg.text_max_length, max_bad_fraction=cfg.max_bad_fraction)
  queries = pipelines.eval_queries_dataset(
      rel, batch_size=local, max_length=cfg.query_max_length)
  # eval_max_products keeps the first rows, so row indices stay valid.
  relevant = [{p for p, l in q.items() if l == 2 and p < len(catalog)}
              for q in rel.qrels(min_label=2)]
  return Stage2Eval(list(products), list(queries), relevant)
