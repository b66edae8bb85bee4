"""grain train pipelines: stage 1 (catalog) and stage 2 (relevance) batches.

Random access, so resumable mid-epoch and deterministic:

  record indices of this process's shard (`shards.shard_range`: even split,
  remainder dropped)
    -> shuffle(seed), reshuffled every epoch -> repeat(num_epochs)
    -> random_map(decode + BLIP train augment + tokenise: `examples.py`);
       the per-example rng comes from (seed, shard, element index), so the
       output does not depend on the number of worker processes
    -> [mp_prefetch: worker processes]
    -> `batching.BatchSkippingBad`: drops and counts examples whose image
       failed to decode, stacks `batch_size` good ones into a dict of numpy
       arrays and normalises the uint8 images.

`iter(ds)` returns a grain DatasetIterator: `it.get_state()` / `it.set_state()`
checkpoint it (the state is JSON-friendly and includes the bad-record
counts); `it.bad` is its `BadRecords` (summary of skips so far).

Batch formats are documented in `dashclip_jax/data/__init__.py`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import flags
import grain
import numpy as np

from dashclip_jax.data import batching
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import examples
from dashclip_jax.data import relevance as relevance_lib
from dashclip_jax.data import shards


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) for p in parts]
                                    ).generate_state(1)[0])


def default_read_threads(worker_count: int, read_threads: int | None) -> int:
  """`read_threads`, or when None (or 0) the threads per process that decode
  and transform examples."""
  if read_threads:
    return read_threads
  # Decode/augment release the GIL: in-process, threads use the cores;
  # with workers, one thread each (more only oversubscribes the cores).
  return 1 if worker_count else min(os.cpu_count() or 1, 8)


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """How a train pipeline reads its records, either stage.

  batch_size: per-process batch size B.
  seed: shuffling and augmentation seed.
  num_epochs: None repeats forever.
  shard: None (this JAX process), grain ShardOptions, or (index, count).
  worker_count: grain worker processes (0: threads in this process).
  worker_buffer_size: examples buffered per worker.
  read_threads: threads per process that run the per-example transform
    (None: `default_read_threads`).
  max_bad_fraction: stop with BadDataError above this fraction of the
    records seen (judged from `min_seen_for_bad_fraction` records on, and at
    the end of the data).
  min_seen_for_bad_fraction: the smallest sample the fraction is judged on.
  """
  batch_size: int
  seed: int = 0
  num_epochs: int | None = None
  shard: Any = None
  worker_count: int = 0
  worker_buffer_size: int = 2
  read_threads: int | None = None
  max_bad_fraction: float = 0.01
  min_seen_for_bad_fraction: int = batching.MIN_SEEN


def _train_pipeline(num_records: int, example_fn: grain.transforms.RandomMap,
                    name: str, opts: PipelineOptions
                    ) -> batching.BatchSkippingBad:
  index, count = shards.resolve_shard(opts.shard)
  read_threads = default_read_threads(opts.worker_count, opts.read_threads)
  start, stop = shards.shard_range(num_records, index, count)
  ds = grain.MapDataset.range(start, stop)
  ds = ds.shuffle(seed=_seed(opts.seed, index, 0)).repeat(opts.num_epochs)
  ds = ds.random_map(example_fn, seed=_seed(opts.seed, index, 1))
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=2 * opts.batch_size))
  if opts.worker_count > 0:
    # grain reads absl flags when it starts workers; outside absl.app.run
    # (tests, notebooks) they are unparsed, so take the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=opts.worker_count,
        per_worker_buffer_size=opts.worker_buffer_size))
  return batching.BatchSkippingBad(
      ds, opts.batch_size, f"{name} (shard {index}/{count})",
      opts.max_bad_fraction, opts.min_seen_for_bad_fraction)


def stage1_dataset(
    catalog: catalog_lib.Catalog,
    opts: PipelineOptions,
    *,
    image_size: int = 224,
    max_length: int = 30,
    min_scale: float = 0.2,
    augment: bool = True,
    tokenizer=None,
) -> batching.BatchSkippingBad:
  """Stage-1 (catalog) training batches.

  Args:
    catalog: products to train on (e.g. `catalog.subset("train")`).
    opts: batch size, order, workers, bad-record budget.
    image_size: S (224 in BLIP pretraining).
    max_length: L of the title tokens (30 in BLIP pretraining).
    min_scale: RandomResizedCrop minimum area (0.2 pretraining, 0.5 ft).
    augment: False: eval-style square resize instead of augmentation.
    tokenizer: a BlipTokenizer (default: packaged bert-base-uncased vocab).

  Returns:
    IterDataset of dicts: image f32 (B,S,S,3), ids/mask i32 (B,L),
    product_id i32 (B,), category i32 (B,).
  """
  fn = examples.Stage1Example(catalog, image_size=image_size,
                              max_length=max_length, min_scale=min_scale,
                              augment=augment, tokenizer=tokenizer)
  return _train_pipeline(len(catalog), fn, f"stage1 {catalog.name}", opts)


def stage2_dataset(
    catalog: catalog_lib.Catalog,
    relevance: relevance_lib.Relevance,
    opts: PipelineOptions,
    *,
    image_size: int = 384,
    query_length: int = 35,
    title_length: int = 35,
    min_scale: float = 0.5,
    augment: bool = True,
    num_negatives: int = 4,
    label1_policy: str = "weighted",
    label1_weight: float = 0.5,
    max_relevant: int = 256,
    tokenizer=None,
    product_ok: np.ndarray | None = None,
    query_rewrite_rate: float = 0.0,
) -> batching.BatchSkippingBad:
  """Stage-2 (query-product relevance) training batches.

  One record per positive (query, product) pair (`relevance.stage2_pairs`).
  Each example also carries `num_negatives` queries drawn without replacement
  from the product's label-0 queries (fewer if it has fewer; `neg_valid` marks
  real ones), and its query's relevant products for false-negative masking.

  Args:
    catalog: the catalog `relevance` was validated against.
    relevance: graded pairs.
    opts, image_size, min_scale, augment, tokenizer: as in `stage1_dataset`
      (defaults follow BLIP retrieval).
    query_length: Lq. title_length: Lt.
    num_negatives: N mined negative queries per example.
    label1_policy: "positive", "weighted" (default) or "exclude".
    label1_weight: weight of label-1 pairs under "weighted".
    max_relevant: cap on R (relevant products per query).
    product_ok: bool (num products,): set when the trainer feeds cached
      product features; batches then carry no `image`, and pairs whose
      product is not ok are skipped as bad records.
    query_rewrite_rate: each example's query is reworded by the synonym
      table (`query_rewrite.substitute`), each matched word or phrase
      replaced with this probability; 0 keeps the queries as written.

  Returns:
    IterDataset of dicts (see the package docstring for keys and shapes).
  """
  if relevance.num_products != len(catalog):
    raise ValueError(f"{relevance.name} indexes {relevance.num_products} "
                     f"products but the catalog has {len(catalog)}; pass the "
                     "catalog the relevance data was loaded against.")
  pairs = relevance_lib.stage2_pairs(relevance, label1_policy, label1_weight)
  relevant = relevance_lib.relevant_table(relevance, max_relevant)
  fn = examples.Stage2Example(
      catalog, relevance.queries, pairs, relevance.queries_by_product([0]),
      relevant, image_size=image_size, query_length=query_length,
      title_length=title_length, min_scale=min_scale,
      num_negatives=num_negatives, augment=augment, tokenizer=tokenizer,
      product_ok=product_ok, query_rewrite_rate=query_rewrite_rate)
  return _train_pipeline(len(pairs), fn, f"stage2 {relevance.name}", opts)
