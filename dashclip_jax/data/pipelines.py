"""grain input pipelines: stage 1 (catalog), stage 2 (relevance), eval.

Train pipelines (random access, so resumable mid-epoch and deterministic):

  record indices of this process's shard (even split, remainder dropped)
    -> shuffle(seed), reshuffled every epoch -> repeat(num_epochs)
    -> random_map(decode + BLIP train augment + tokenise); the per-example rng
       comes from (seed, shard, element index), so the output does not depend
       on the number of worker processes
    -> [mp_prefetch: worker processes]
    -> BatchSkippingBad: drops and counts examples whose image failed to
       decode, stacks `batch_size` good ones into a dict of numpy arrays and
       normalises the uint8 images (workers ship uint8: 4x less traffic).

`iter(ds)` returns a grain DatasetIterator: `it.get_state()` / `it.set_state()`
checkpoint it (the state is JSON-friendly and includes the bad-record
counts); `it.bad` is its `BadRecords` (summary of skips so far).

Eval pipelines are grain MapDatasets of batches whose length is the same on
every process; rows past the end are padding with `valid == 0`.

Batch formats are documented in `dashclip_jax/data/__init__.py`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from absl import flags
import grain
import numpy as np

from dashclip_jax import preprocess
from dashclip_jax import tokenizer as tokenizer_lib
from dashclip_jax.data import augment as augment_lib
from dashclip_jax.data import bad_records as br
from dashclip_jax.data import catalog as catalog_lib
from dashclip_jax.data import relevance as relevance_lib

# Keys an example dict carries instead of data when its record was bad:
# what failed, and the culprit ("styles.csv line 17 (product 1865)").
BAD_KEY = "__bad__"
BAD_WHERE_KEY = "__bad_where__"
# Train pipelines judge max_bad_fraction from this many images on (config:
# data.min_seen_for_bad_fraction); the end of the data is always judged.
MIN_SEEN = 50


# ---------------------------------------------------------------------------
# Sharding and seeds.


def resolve_shard(shard: Any = None) -> tuple[int, int]:
  """(shard_index, shard_count) from None (= this JAX process), a grain
  ShardOptions, or an (index, count) pair."""
  if shard is None:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index(), jax.process_count()
  if hasattr(shard, "shard_index"):
    return int(shard.shard_index), int(shard.shard_count)
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} not in [0, {count})")
  return int(index), int(count)


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
  """Contiguous [start, stop) of shard `index`; every shard gets n // count
  records so all processes run the same number of steps per epoch (the
  n % count last records are left out of training)."""
  per = n // count
  if per == 0:
    raise ValueError(f"{n} records cannot be split over {count} shards")
  return index * per, (index + 1) * per


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) for p in parts]
                                    ).generate_state(1)[0])


# ---------------------------------------------------------------------------
# Per-example transforms (picklable: they run in worker processes).


class _Text:
  """pre_caption + fixed-length BLIP tokenisation of one string."""

  def __init__(self, tokenizer, max_length: int):
    self.tokenizer = tokenizer or tokenizer_lib.BlipTokenizer.from_vocab()
    self.max_length = max_length

  def __call__(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = self.tokenizer([tokenizer_lib.pre_caption(text)],
                               self.max_length)
    return ids[0], mask[0]


def _train_pixels(catalog, i, rng, image_size, min_scale, augment):
  """Product i's image -> uint8 (S, S, 3) (may raise ImageError).

  Normalisation to float32 happens per batch in the main process: worker
  processes then ship uint8, 4x less inter-process traffic.
  """
  image = catalog.load_image(i)
  if augment:
    return augment_lib.train_augment(image, image_size, rng,
                                     min_scale=min_scale)
  return preprocess.resize_square(image, image_size)


class Stage1Example(grain.transforms.RandomMap):
  """Catalog row -> {image, ids, mask, product_id, category}."""

  def __init__(self, catalog: catalog_lib.Catalog, *, image_size: int,
               max_length: int, min_scale: float, augment: bool = True,
               tokenizer=None):
    self.catalog = catalog
    self.image_size = image_size
    self.min_scale = min_scale
    self.augment = augment
    self.text = _Text(tokenizer, max_length)

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    try:
      image = _train_pixels(self.catalog, index, rng, self.image_size,
                            self.min_scale, self.augment)
    except catalog_lib.ImageError as e:
      return {BAD_KEY: e.reason, BAD_WHERE_KEY: e.where}
    ids, mask = self.text(self.catalog.titles[index])
    return {"image": image, "ids": ids, "mask": mask,
            "product_id": np.int32(index),
            "category": np.int32(self.catalog.category[index])}


class Stage2Example(grain.transforms.RandomMap):
  """Positive pair -> query, product (image + title), negatives, masks."""

  def __init__(self, catalog: catalog_lib.Catalog,
               queries: Sequence[str], pair_query: np.ndarray,
               pair_product: np.ndarray, pair_label: np.ndarray,
               pair_weight: np.ndarray, neg_queries: list[np.ndarray],
               relevant: np.ndarray, *, image_size: int,
               query_length: int, title_length: int, min_scale: float,
               num_negatives: int, augment: bool = True, tokenizer=None,
               product_ok: np.ndarray | None = None):
    self.catalog = catalog
    # product_ok (bool per product) given: images are not read (the trainer
    # feeds cached product features), and pairs of products whose image
    # failed when the table was built are skipped and counted.
    self.product_ok = product_ok
    self.queries = list(queries)
    self.pair_query, self.pair_product = pair_query, pair_product
    self.pair_label, self.pair_weight = pair_label, pair_weight
    self.neg_queries = neg_queries
    self.relevant = relevant
    self.image_size, self.min_scale = image_size, min_scale
    self.num_negatives = num_negatives
    self.augment = augment
    tok = tokenizer or tokenizer_lib.BlipTokenizer.from_vocab()
    self.query_text = _Text(tok, query_length)
    self.title_text = _Text(tok, title_length)

  def random_map(self, index: int, rng: np.random.Generator) -> dict:
    q, p = int(self.pair_query[index]), int(self.pair_product[index])
    if self.product_ok is not None:
      if not self.product_ok[p]:
        return {BAD_KEY: "image failed in the product table",
                BAD_WHERE_KEY: self.catalog.culprit(p)}
      image = None
    else:
      try:
        image = _train_pixels(self.catalog, p, rng, self.image_size,
                              self.min_scale, self.augment)
      except catalog_lib.ImageError as e:
        return {BAD_KEY: e.reason, BAD_WHERE_KEY: e.where}
    query_ids, query_mask = self.query_text(self.queries[q])
    title_ids, title_mask = self.title_text(self.catalog.titles[p])
    n, lq = self.num_negatives, self.query_text.max_length
    neg_ids = np.zeros((n, lq), np.int32)
    neg_mask = np.zeros((n, lq), np.int32)
    neg_index = np.full((n,), -1, np.int32)
    candidates = self.neg_queries[p]
    if n and len(candidates):
      chosen = rng.choice(candidates, size=min(n, len(candidates)),
                          replace=False)
      for k, nq in enumerate(chosen):
        neg_ids[k], neg_mask[k] = self.query_text(self.queries[int(nq)])
        neg_index[k] = nq
    out = {
        "query_ids": query_ids, "query_mask": query_mask,
        "image": image, "title_ids": title_ids, "title_mask": title_mask,
        "product_id": np.int32(p), "query_index": np.int32(q),
        "label": np.int32(self.pair_label[index]),
        "label_weight": np.float32(self.pair_weight[index]),
        "neg_query_ids": neg_ids, "neg_query_mask": neg_mask,
        "neg_query_index": neg_index, "neg_valid": neg_index >= 0,
        "relevant_product_ids": self.relevant[q],
    }
    if image is None:
      del out["image"]
    return out


# ---------------------------------------------------------------------------
# Filtering bad examples and batching, with checkpointable counts.


def stack(examples: Sequence[dict]) -> dict:
  """List of example dicts -> dict of arrays with a leading batch axis."""
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class _BatchSkippingBadIterator(grain.DatasetIterator):
  """Drops + counts bad examples, stacks good ones into batches."""

  def __init__(self, parent, batch_size: int, bad: br.BadRecords):
    super().__init__(parent)
    self._batch_size = batch_size
    self.bad = bad

  def __next__(self) -> dict:
    examples = []
    while len(examples) < self._batch_size:
      try:
        example = next(self._parent)
      except StopIteration:
        self.bad.check()  # End of data: final verdict on the bad fraction.
        raise
      if BAD_KEY in example:
        self.bad.bad(example.get(BAD_WHERE_KEY, "?"), "bad image",
                     example[BAD_KEY])
      else:
        self.bad.ok()
        examples.append(example)
      # Judged on the images seen so far, from bad.min_seen of them on.
      self.bad.judge()
    batch = stack(examples)
    if "image" in batch:
      batch["image"] = preprocess.normalize(batch["image"])  # uint8 -> f32.
    return batch

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "bad": self.bad.get_state()}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self.bad.set_state(state["bad"])


class BatchSkippingBad(grain.IterDataset):
  """IterDataset of batches of good examples (drop_remainder at the end)."""

  def __init__(self, parent: grain.IterDataset, batch_size: int, name: str,
               max_bad_fraction: float, min_seen: int = MIN_SEEN):
    super().__init__(parent)
    self._batch_size = batch_size
    self._name = name
    self._max_bad_fraction = max_bad_fraction
    self._min_seen = min_seen

  def __iter__(self) -> _BatchSkippingBadIterator:
    bad = br.BadRecords(self._name, max_bad_fraction=self._max_bad_fraction,
                        min_seen=self._min_seen)
    return _BatchSkippingBadIterator(self._parent.__iter__(), self._batch_size,
                                     bad)

  def __str__(self) -> str:
    return f"BatchSkippingBad(batch_size={self._batch_size})"


def _train_pipeline(num_records: int, example_fn: grain.transforms.RandomMap,
                    *, name: str, batch_size: int, seed: int,
                    num_epochs: int | None, shard: Any, worker_count: int,
                    worker_buffer_size: int, read_threads: int | None,
                    max_bad_fraction: float,
                    min_seen_for_bad_fraction: int) -> BatchSkippingBad:
  index, count = resolve_shard(shard)
  if read_threads is None:
    # Decode/augment release the GIL: in-process, threads use the cores;
    # with workers, one thread each (more only oversubscribes the cores).
    read_threads = 1 if worker_count else min(os.cpu_count() or 1, 8)
  start, stop = shard_range(num_records, index, count)
  ds = grain.MapDataset.range(start, stop)
  ds = ds.shuffle(seed=_seed(seed, index, 0)).repeat(num_epochs)
  ds = ds.random_map(example_fn, seed=_seed(seed, index, 1))
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=2 * batch_size))
  if worker_count > 0:
    # grain reads absl flags when it starts workers; outside absl.app.run
    # (tests, notebooks) they are unparsed, so take the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return BatchSkippingBad(ds, batch_size, f"{name} (shard {index}/{count})",
                          max_bad_fraction, min_seen_for_bad_fraction)


# ---------------------------------------------------------------------------
# Public pipelines.


def stage1_dataset(
    catalog: catalog_lib.Catalog,
    *,
    batch_size: int,
    image_size: int = 224,
    max_length: int = 30,
    min_scale: float = 0.2,
    augment: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    shard: Any = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int | None = None,
    max_bad_fraction: float = 0.01,
    min_seen_for_bad_fraction: int = MIN_SEEN,
    tokenizer=None,
) -> BatchSkippingBad:
  """Stage-1 (catalog) training batches.

  Args:
    catalog: products to train on (e.g. `catalog.subset("train")`).
    batch_size: per-process batch size B.
    image_size: S (224 in BLIP pretraining).
    max_length: L of the title tokens (30 in BLIP pretraining).
    min_scale: RandomResizedCrop minimum area (0.2 pretraining, 0.5 ft).
    augment: False: eval-style square resize instead of augmentation.
    seed: shuffling and augmentation seed.
    num_epochs: None repeats forever.
    shard: None (this JAX process), grain ShardOptions, or (index, count).
    worker_count: grain worker processes (0: threads in this process).
    worker_buffer_size: examples buffered per worker.
    read_threads: threads per process that run the per-example transform
      (None: min(cores, 8) without workers, 1 per worker with them).
    max_bad_fraction: stop with BadDataError above this fraction of the
      images seen (judged from `min_seen_for_bad_fraction` images on, and at
      the end of the data).
    min_seen_for_bad_fraction: the smallest sample the fraction is judged on.
    tokenizer: a BlipTokenizer (default: packaged bert-base-uncased vocab).

  Returns:
    IterDataset of dicts: image f32 (B,S,S,3), ids/mask i32 (B,L),
    product_id i32 (B,), category i32 (B,).
  """
  fn = Stage1Example(catalog, image_size=image_size, max_length=max_length,
                     min_scale=min_scale, augment=augment, tokenizer=tokenizer)
  return _train_pipeline(
      len(catalog), fn, name=f"stage1 {catalog.name}", batch_size=batch_size,
      seed=seed, num_epochs=num_epochs, shard=shard, worker_count=worker_count,
      worker_buffer_size=worker_buffer_size, read_threads=read_threads,
      max_bad_fraction=max_bad_fraction,
      min_seen_for_bad_fraction=min_seen_for_bad_fraction)


def stage2_dataset(
    catalog: catalog_lib.Catalog,
    relevance: relevance_lib.Relevance,
    *,
    batch_size: int,
    image_size: int = 384,
    query_length: int = 35,
    title_length: int = 35,
    min_scale: float = 0.5,
    augment: bool = True,
    num_negatives: int = 4,
    label1_policy: str = "weighted",
    label1_weight: float = 0.5,
    max_relevant: int = 256,
    seed: int = 0,
    num_epochs: int | None = None,
    shard: Any = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int | None = None,
    max_bad_fraction: float = 0.01,
    min_seen_for_bad_fraction: int = MIN_SEEN,
    tokenizer=None,
    product_ok: np.ndarray | None = None,
) -> BatchSkippingBad:
  """Stage-2 (query-product relevance) training batches.

  One record per positive (query, product) pair (`relevance.stage2_pairs`).
  Each example also carries `num_negatives` queries drawn without replacement from
  the product's label-0 queries (fewer if it has fewer; `neg_valid` marks
  real ones), and its query's relevant products for false-negative masking.

  Args:
    catalog: the catalog `relevance` was validated against.
    relevance: graded pairs.
    batch_size, image_size, min_scale, augment, seed, num_epochs, shard,
      worker_count, worker_buffer_size, read_threads, max_bad_fraction,
      min_seen_for_bad_fraction, tokenizer: as in `stage1_dataset`
      (defaults follow BLIP retrieval).
    query_length: Lq. title_length: Lt.
    num_negatives: N mined negative queries per example.
    label1_policy: "positive", "weighted" (default) or "exclude".
    label1_weight: weight of label-1 pairs under "weighted".
    max_relevant: cap on R (relevant products per query).
    product_ok: bool (num products,): set when the trainer feeds cached
      product features; batches then carry no `image`, and pairs whose
      product is not ok are skipped as bad records.

  Returns:
    IterDataset of dicts (see the package docstring for keys and shapes).
  """
  if relevance.num_products != len(catalog):
    raise ValueError(f"{relevance.name} indexes {relevance.num_products} "
                     f"products but the catalog has {len(catalog)}; pass the "
                     "catalog the relevance data was loaded against.")
  pq, pp, pl, pw = relevance_lib.stage2_pairs(relevance, label1_policy,
                                               label1_weight)
  relevant = relevance_lib.relevant_table(relevance, max_relevant)
  fn = Stage2Example(
      catalog, relevance.queries, pq, pp, pl, pw,
      relevance.queries_by_product([0]), relevant,
      image_size=image_size, query_length=query_length,
      title_length=title_length, min_scale=min_scale,
      num_negatives=num_negatives, augment=augment, tokenizer=tokenizer,
      product_ok=product_ok)
  return _train_pipeline(
      len(pq), fn, name=f"stage2 {relevance.name}", batch_size=batch_size,
      seed=seed, num_epochs=num_epochs, shard=shard, worker_count=worker_count,
      worker_buffer_size=worker_buffer_size, read_threads=read_threads,
      max_bad_fraction=max_bad_fraction,
      min_seen_for_bad_fraction=min_seen_for_bad_fraction)


# ---------------------------------------------------------------------------
# Eval: every item once, padded so every process runs the same batch count.


def eval_plan(n: int, batch_size: int, shard: Any) -> tuple[np.ndarray, int]:
  """Items of this process (strided) and the padded length (same on all)."""
  index, count = resolve_shard(shard)
  items = np.arange(index, n, count)
  per_process = math.ceil(n / count)
  return items, math.ceil(per_process / batch_size) * batch_size


class _ProductEval:
  """Padded position -> {image, title_ids, title_mask, product_id, valid}."""

  def __init__(self, catalog, items, image_size, max_length, tokenizer, bad,
               text_prefix):
    self.catalog, self.items = catalog, items
    self.image_size = image_size
    self.text = _Text(tokenizer, max_length)
    self.bad = bad
    self.ids_key = text_prefix + "ids"
    self.mask_key = text_prefix + "mask"

  def __call__(self, pos: int) -> dict:
    s, l = self.image_size, self.text.max_length
    out = {"image": np.zeros((s, s, 3), np.float32),
           self.ids_key: np.zeros((l,), np.int32),
           self.mask_key: np.zeros((l,), np.int32),
           "product_id": np.int32(-1), "valid": np.int32(0)}
    if pos >= len(self.items):
      return out
    i = int(self.items[pos])
    out[self.ids_key], out[self.mask_key] = self.text(self.catalog.titles[i])
    out["product_id"] = np.int32(i)
    try:
      out["image"] = preprocess.eval_transform(self.catalog.load_image(i), s)
    except catalog_lib.ImageError as e:
      self.bad.bad(e.where, "bad image", e.reason)
      return out  # valid stays 0: the evaluator leaves this product out.
    self.bad.ok()
    out["valid"] = np.int32(1)
    return out


class _QueryEval:
  """Padded position -> {query_ids, query_mask, query_index, valid}."""

  def __init__(self, queries, items, max_length, tokenizer):
    self.queries, self.items = queries, items
    self.text = _Text(tokenizer, max_length)

  def __call__(self, pos: int) -> dict:
    l = self.text.max_length
    out = {"query_ids": np.zeros((l,), np.int32),
           "query_mask": np.zeros((l,), np.int32),
           "query_index": np.int32(-1), "valid": np.int32(0)}
    if pos < len(self.items):
      q = int(self.items[pos])
      out["query_ids"], out["query_mask"] = self.text(self.queries[q])
      out["query_index"] = np.int32(q)
      out["valid"] = np.int32(1)
    return out


def eval_products_dataset(catalog: catalog_lib.Catalog, *, batch_size: int,
                          image_size: int = 384, max_length: int = 35,
                          shard: Any = None, max_bad_fraction: float = 0.01,
                          tokenizer=None, text_prefix: str = "title_"
                          ) -> grain.MapDataset:
  """Every product once (this process: every count-th), eval transform.

  Returns a MapDataset of batches; `ds.bad` counts undecodable images (their
  rows come back with valid=0). Keys: image f32 (B,S,S,3), title_ids/
  title_mask i32 (B,L) (`ids`/`mask` with text_prefix="", the stage-1 batch
  names), product_id i32 (B,) (-1 on padding), valid i32 (B,).
  """
  items, length = eval_plan(len(catalog), batch_size, shard)
  bad = br.BadRecords(f"eval products {catalog.name}",
                      max_bad_fraction=max_bad_fraction)
  fn = _ProductEval(catalog, items, image_size, max_length, tokenizer, bad,
                    text_prefix)
  ds = grain.MapDataset.range(length).map(fn).batch(batch_size, batch_fn=stack)
  ds.bad = bad
  return ds


def eval_queries_dataset(relevance: relevance_lib.Relevance, *,
                         batch_size: int, max_length: int = 35,
                         shard: Any = None, tokenizer=None
                         ) -> grain.MapDataset:
  """Every query once (this process: every count-th), padded like products.

  Keys: query_ids/query_mask i32 (B,L), query_index i32 (B,) (-1 on padding;
  index into `relevance.queries`, whose qrels are `relevance.qrels()`),
  valid i32 (B,).
  """
  items, length = eval_plan(relevance.num_queries, batch_size, shard)
  fn = _QueryEval(relevance.queries, items, max_length, tokenizer)
  return grain.MapDataset.range(length).map(fn).batch(batch_size,
                                                       batch_fn=stack)
