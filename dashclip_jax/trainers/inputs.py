"""The trainers' train data: config.data -> train iterators.

Train data is read in `num_shards` shards (default: one per process). Each
process iterates its shards and concatenates their rows, so the global batch
is shard 0's rows, then shard 1's, ... whatever the number of processes: a
run with 1 process and num_shards=2 sees exactly the batches of a 2-process
run (used to check multi-host runs against one host, bit for bit).

A prepared train relevance (`python -m dashclip_jax.data.prepare
--num_shards=F`: F files, a query's pairs all in file `query_shards(id, F)`)
is never read whole by a trainer: shard s of n reads only its files f with
f % n == s (n must divide F, so its queries are those with
`query_shards(id, n) == s`, as for a CSV) and trains on every row of them.
Each shard cycles through its own rows (shards differ in size by the hash's
chance, so a row of a smaller shard comes a little more often) and mines
negative queries among its own queries. Stage 2's held-out queries (a hash
of their text) are split per shard and gathered from every process back
into table order: the same held-out set, hence the same metrics, as
reading the table whole.

The eval data is `eval_inputs.py`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import pyarrow as pa

from dashclip_jax import model as model_lib
from dashclip_jax.data import eval_datasets
from dashclip_jax.data import prepared
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import relevance_tables
from dashclip_jax.data import sources as sources_lib
from dashclip_jax.data import train_datasets
from dashclip_jax.runtime.config_files import ConfigError


# The config.data fields that name the data (sources.load_sources reads them;
# retired ones only to name their replacement).
SOURCE_KEYS = sources_lib.SOURCE_KEYS + sources_lib.RETIRED_KEYS


@functools.lru_cache(maxsize=4)
def _sources(frozen_cfg: str) -> sources_lib.Sources:
  # A prepared train relevance is read shard by shard (`_prepared_shards`).
  return sources_lib.load_sources(json.loads(frozen_cfg),
                                  whole_train_relevance=False)


def _frozen(cfg: ml_collections.ConfigDict) -> str:
  d = cfg.to_dict()
  return json.dumps({k: d[k] for k in SOURCE_KEYS if k in d}, sort_keys=True,
                    default=str)


def load_sources(cfg: ml_collections.ConfigDict) -> sources_lib.Sources:
  """Train/test catalogs and relevance named by `cfg` (cached per config).
  A prepared train relevance is only named (`train_table`), not read."""
  return _sources(_frozen(cfg))


def _max_bad(frozen_cfg: str) -> float:
  return float(json.loads(frozen_cfg).get("max_bad_fraction", 0.01))


@functools.lru_cache(maxsize=4)
def _split(frozen_cfg: str, fraction: float
           ) -> tuple[relevance_lib.Relevance, relevance_lib.Relevance]:
  # Once per config: the training pairs and the held-out evaluation both
  # ask for it, and at 32M pairs a split is seconds and two copies.
  src = _sources(frozen_cfg)
  rel = src.train_relevance
  if src.train_table:  # Whole, for callers other than the trainers.
    rel = relevance_tables.load_relevance(src.train_table, src.train_catalog,
                                          max_bad_fraction=_max_bad(frozen_cfg))
  return rel.split_queries(fraction)


def local_shards(num_shards: int) -> tuple[list[int], int]:
  """-> (this process's train data shards, the shard count): `num_shards`
  (0: one per process), process i taking the i-th run of equal length."""
  n_proc, proc = jax.process_count(), jax.process_index()
  num_shards = num_shards or n_proc
  if num_shards % n_proc:
    raise ConfigError(f"data.num_shards={num_shards} is not a multiple of "
                      f"the {n_proc} processes")
  per_proc = num_shards // n_proc
  return list(range(proc * per_proc, (proc + 1) * per_proc)), num_shards


@dataclasses.dataclass
class _Shard:
  """One shard's queries of a prepared train relevance, split."""
  kept: relevance_lib.Relevance
  held: relevance_lib.Relevance
  held_pair: np.ndarray  # int64 (len(held),): each pair's place in the table


@functools.lru_cache(maxsize=2)
def _prepared_shards(frozen_cfg: str, fraction: float, num_shards: int
                     ) -> dict[int, _Shard]:
  """This process's shards of the prepared train relevance: only their
  files are read, once for the training pairs and the held-out eval."""
  src = _sources(frozen_cfg)
  files = prepared.shard_count(src.train_table)
  shards, num_shards = local_shards(num_shards)
  if files % num_shards:
    # A query's pairs stay in one file: shards would get unequal shares.
    raise ConfigError(
        f"data.num_shards={num_shards} does not divide the {files} shard "
        f"files of {src.train_table}; prepare it with --num_shards a "
        f"multiple of {num_shards}, or set data.num_shards to a divisor of "
        f"{files} (and a multiple of the {jax.process_count()} processes)")
  out = {}
  for s in shards:
    rel, pair = prepared.read_shard(src.train_table, src.train_catalog,
                                    shard=(s, num_shards),
                                    max_bad_fraction=_max_bad(frozen_cfg))
    held = relevance_lib.heldout_queries(rel.queries, fraction)
    out[s] = _Shard(rel.take_queries(np.flatnonzero(~held), "kept"),
                    rel.take_queries(np.flatnonzero(held), "held out"),
                    pair[held[rel.query]])
  return out


def _shards_of(cfg: ml_collections.ConfigDict) -> dict[int, _Shard]:
  return _prepared_shards(_frozen(cfg), float(cfg.heldout_query_fraction),
                          int(cfg.num_shards))


def _allgather_table(table: pa.Table) -> list[pa.Table]:
  """Every process's `table`, in process order (a collective: every process
  calls it). Sent as Arrow IPC bytes padded to the longest."""
  sink = pa.BufferOutputStream()
  with pa.ipc.new_stream(sink, table.schema) as writer:
    writer.write_table(table)
  blob = np.frombuffer(sink.getvalue(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(
      np.int32(blob.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:blob.size] = blob
  blobs = np.asarray(multihost_utils.process_allgather(padded))
  return [pa.ipc.open_stream(blobs[i, :sizes[i]].tobytes()).read_all()
          for i in range(len(sizes))]


def _concat(parts: list[tuple[pa.Table, pa.Table]]
            ) -> tuple[pa.Table, pa.Table]:
  """(queries, pairs) tables of several parts -> one: pair `query` indices
  are shifted past the queries of the parts before."""
  offsets = np.cumsum([0] + [len(q) for q, _ in parts])
  pairs = [p.set_column(0, "query", pa.array(
      p.column("query").to_numpy() + np.int32(o), pa.int32()))
           for (_, p), o in zip(parts, offsets)]
  return (pa.concat_tables([q for q, _ in parts]),
          pa.concat_tables(pairs))


def _prepared_heldout(cfg: ml_collections.ConfigDict, num_products: int
                      ) -> relevance_lib.Relevance:
  """The held-out queries of every shard of every process, in table order:
  equal to splitting the whole table (Memory O(held-out pairs))."""
  parts = [(pa.table({"query_id": pa.array(s.held.query_ids, pa.string()),
                      "query": pa.array(s.held.queries, pa.string())}),
            pa.table({"query": pa.array(s.held.query, pa.int32()),
                      "product": pa.array(s.held.product, pa.int32()),
                      "label": pa.array(s.held.label, pa.int8()),
                      "pair": pa.array(s.held_pair, pa.int64())}))
           for _, s in sorted(_shards_of(cfg).items())]
  queries, pairs = _concat(parts)
  if jax.process_count() > 1:
    queries, pairs = _concat(list(zip(_allgather_table(queries),
                                      _allgather_table(pairs))))
  order = np.argsort(pairs.column("pair").to_numpy(), kind="stable")
  q = pairs.column("query").to_numpy()[order]
  # Queries in first-appearance order, as the whole table's split keeps them.
  seen, first = np.unique(q, return_index=True)
  seen = seen[np.argsort(first)]
  new = np.full(len(queries), -1, np.int32)
  new[seen] = np.arange(len(seen), dtype=np.int32)
  sel = pa.array(seen)
  return relevance_lib.Relevance(
      name=f"{load_sources(cfg).train_table} [held out: {len(seen)} queries]",
      query_ids=queries.column("query_id").take(sel).to_pylist(),
      queries=queries.column("query").take(sel).to_pylist(),
      query=new[q], product=pairs.column("product").to_numpy()[order],
      label=pairs.column("label").to_numpy()[order],
      num_products=num_products)


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
               product_features: np.ndarray | None = None,
               relevant_width: int | None = None):
    self.product_features = product_features
    # Shards of a prepared table each size `relevant_product_ids` (B, R) by
    # their own queries: padded with -1 to one R, agreed by all processes.
    self.relevant_width = relevant_width
    self.shards, num_shards = local_shards(num_shards)
    if global_batch % num_shards:
      raise ConfigError(f"global batch {global_batch} is not divisible by "
                        f"data.num_shards={num_shards}")
    self._iters = [iter(make_dataset(global_batch // num_shards,
                                     (s, num_shards))) for s in self.shards]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._iters]
    if self.relevant_width is not None:
      for p in parts:
        ids = p["relevant_product_ids"]
        p["relevant_product_ids"] = np.pad(
            ids, ((0, 0), (0, self.relevant_width - ids.shape[1])),
            constant_values=-1)
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


def _pipeline_options(cfg: ml_collections.ConfigDict, batch_size: int,
                      shard: Any, seed: int
                      ) -> train_datasets.PipelineOptions:
  """config.data's reading options of one shard's pipeline."""
  return train_datasets.PipelineOptions(
      batch_size=batch_size, seed=seed, shard=shard,
      worker_count=cfg.workers, worker_buffer_size=cfg.worker_buffer_size,
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
          catalog, _pipeline_options(cfg, b, shard, seed),
          image_size=image_size(cfg, model_config),
          max_length=cfg.text_max_length, min_scale=cfg.min_scale,
          augment=cfg.augment),
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
  features, ok = product_table if product_table is not None else (None, None)

  def dataset(rel, opts):
    return train_datasets.stage2_dataset(
        src.train_catalog, rel, opts,
        image_size=image_size(cfg, model_config),
        query_length=cfg.query_max_length, title_length=cfg.text_max_length,
        min_scale=cfg.min_scale, augment=cfg.augment and not frozen_tower,
        num_negatives=cfg.num_negatives, label1_policy=cfg.label1_policy,
        label1_weight=cfg.label1_weight, max_relevant=cfg.max_relevant,
        product_ok=ok, query_rewrite_rate=cfg.query_rewrite_rate)

  if not src.train_table:
    kept, _ = train_relevance(cfg)
    return ShardedBatches(
        lambda b, shard: dataset(kept, _pipeline_options(cfg, b, shard, seed)),
        global_batch, cfg.num_shards, product_features=features)
  # Shard s holds its own queries whole; negatives come from them too.
  shards = _shards_of(cfg)
  return ShardedBatches(
      lambda b, shard: dataset(shards[shard[0]].kept, _pipeline_options(
          cfg, b, (0, 1), _shard_seed(seed, shard[0]))),
      global_batch, cfg.num_shards, product_features=features,
      relevant_width=_relevant_width([s.kept for s in shards.values()]))


def _relevant_width(shards: list[relevance_lib.Relevance]) -> int:
  """R of `relevance.relevant_table` over the queries of every shard of
  every process (a collective): the width the whole table would have."""
  width = max(max(1, int(np.bincount(rel.query[rel.label >= 1]).max(
      initial=0))) for rel in shards)
  if jax.process_count() > 1:
    width = int(np.max(multihost_utils.process_allgather(np.int32(width))))
  return width


def _shard_seed(seed: int, shard: int) -> int:
  """The data seed of one shard of a prepared table: its records are all
  its own (read as shard (0, 1)), so the shard enters the seed here; shard
  0 keeps `seed`, so one shard trains exactly as the CSV table would."""
  return seed + shard


def train_relevance(cfg: ml_collections.ConfigDict
                    ) -> tuple[relevance_lib.Relevance, relevance_lib.Relevance]:
  """-> (training queries, held-out queries) of the train relevance data.

  `heldout_query_fraction` of the queries (by a hash of their text) never
  train: stage 2 selects its model on them, never on the test set. A
  prepared table is read whole here; the trainers read their shards.
  """
  _require_relevance(cfg)
  return _split(_frozen(cfg), float(cfg.heldout_query_fraction))


def heldout_relevance(cfg: ml_collections.ConfigDict
                      ) -> relevance_lib.Relevance:
  """The held-out train queries (never trained on; stage 2 selects its model
  on them). With a prepared train relevance each process reads only its
  shards and all of them gather the held-out queries (a collective)."""
  _require_relevance(cfg)
  src = load_sources(cfg)
  if src.train_table:
    return _prepared_heldout(cfg, len(src.train_catalog))
  return train_relevance(cfg)[1]


def _require_relevance(cfg: ml_collections.ConfigDict) -> None:
  src = load_sources(cfg)
  if src.train_relevance is None and src.train_table is None:
    raise ConfigError("stage 2 needs graded relevance data for the train "
                      f"catalog; data source {cfg.source!r} "
                      "has none (e.g. relevance_train.csv)")


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
